"""Shared setup of the surgery tests: seeding, the Hypothesis profile, and a strategy that
draws (gradient, references) cases.

The profile is registered here and applied per test with
``@settings(settings.get_profile("dgsnet-surgery"))``, so loading it does not change the
Hypothesis settings of other test directories. ``DGSNET_SURGERY_MAX_EXAMPLES`` raises the
example count for a longer local run.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.helpers import assert_close_rows, low_precision_tol

settings.register_profile(
    "dgsnet-surgery",
    max_examples=int(os.environ.get("DGSNET_SURGERY_MAX_EXAMPLES", "20")),
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # only the seeding fixture below, harmless
    ],
)

# Inductor compiles in a pool of worker processes by default; on a 2-core machine starting the
# pool costs more than it saves (the fused-path tests compile a dozen small graphs).
if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
    import torch._inductor.config

    torch._inductor.config.compile_threads = 1

KINDS = (
    "random",
    "collinear",
    "anticollinear",
    "orthogonal",
    "zero_grad",
    "zero_ref",
    "negative_ref",
    "sparse",
)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


class Case:
    """One drawn input: ``grad`` and ``refs`` (keys ``harm``, ``help``, ``other``).

    A plain class (not a dataclass), so that Hypothesis reports a failing example by its
    short ``repr`` (shape, dtype, scales, seed) rather than by the tensors."""

    def __init__(self, grad: torch.Tensor, refs: dict, kind: str, meta: dict) -> None:
        self.grad, self.refs, self.kind, self.meta = grad, refs, kind, meta

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"Case(kind={self.kind!r}, {', '.join(f'{k}={v}' for k, v in self.meta.items())})"


def _scale_range(dtype: torch.dtype) -> tuple[float, float]:
    # float16 holds 6e-5 .. 6.5e4: keep its samples well inside
    return (-2.0, 2.0) if dtype == torch.float16 else (-8.0, 8.0)


@st.composite
def surgery_cases(
    draw,
    dtypes=(torch.float32, torch.float64),
    kinds=KINDS,
    related="harm",
    max_d: int = 48,
):
    """A :class:`Case` with leading shape (), (B,) or (B, T) (B = 1 included), last dim D,
    a dtype from ``dtypes``, independent log-uniform scales of grad and references
    (1e-8 .. 1e8; 1e-2 .. 1e2 for float16), and ``grad`` related to ``refs[related]`` as
    ``kind`` says (collinear/orthogonal with its positive part for ``related="harm"``, with
    the whole vector otherwise)."""
    dtype = draw(st.sampled_from(dtypes))
    lead = draw(
        st.sampled_from([(), (1,), "B", "BT"]).flatmap(
            lambda s: (
                st.just(s)
                if isinstance(s, tuple)
                else (
                    st.tuples(st.integers(1, 6))
                    if s == "B"
                    else st.tuples(st.integers(1, 4), st.integers(1, 4))
                )
            )
        )
    )
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(kinds))
    lo, hi = _scale_range(dtype)
    g_exp = draw(st.floats(lo, hi))
    r_exp = draw(st.floats(lo, hi))
    seed = draw(st.integers(0, 2**31 - 1))

    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, d)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    refs = {k: randn() * 10.0**r_exp for k in ("harm", "help", "other")}
    r = refs[related]
    direction = r.clamp_min(0) if related == "harm" else r
    g = randn()
    if kind == "collinear":
        g = direction * (10.0**g_exp / 10.0**r_exp)
    elif kind == "anticollinear":
        g = -direction * (10.0**g_exp / 10.0**r_exp)
    elif kind == "orthogonal":
        n2 = (direction * direction).sum(-1, keepdim=True)
        g = g - (g * direction).sum(-1, keepdim=True) / torch.where(n2 > 0, n2, 1.0) * direction
        g = g * 10.0**g_exp
    elif kind == "zero_grad":
        g = torch.zeros(shape, dtype=torch.float64)
    elif kind == "zero_ref":
        refs[related] = torch.zeros(shape, dtype=torch.float64)
        g = g * 10.0**g_exp
    elif kind == "negative_ref":
        refs[related] = -r.abs()
        g = g * 10.0**g_exp
    elif kind == "sparse":
        mask = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.7
        g = g.masked_fill(mask, 0.0) * 10.0**g_exp
        refs[related] = refs[related].masked_fill(~mask, 0.0)
    else:
        g = g * 10.0**g_exp
    meta = {
        "shape": shape,
        "dtype": str(dtype).replace("torch.", ""),
        "g_scale": f"1e{g_exp:.2f}",
        "r_scale": f"1e{r_exp:.2f}",
        "seed": seed,
    }
    return Case(g.to(dtype), {k: v.to(dtype) for k, v in refs.items()}, kind, meta)


@pytest.fixture(scope="session")
def cases():
    """The :func:`surgery_cases` strategy factory (draw with ``data.draw(cases(...))``)."""
    return surgery_cases


@pytest.fixture(scope="session")
def close_rows():
    return assert_close_rows


@pytest.fixture(scope="session")
def tol_for():
    return low_precision_tol
