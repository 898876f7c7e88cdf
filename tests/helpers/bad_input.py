"""What "refused clearly" means for the bad-input tests of every area, and their corruptions.

The bad-input tests (`tests/*/test_bad_input_*.py`) check that every public entry point refuses
wrong input with a clear `TypeError`/`ValueError` (or the library's documented subclass:
`CheckpointError`, `DatasetError`, `CaptionError`) raised by dgsnet itself, never a crash deep
inside torch and never a silently wrong result.

"Clear" is checked mechanically by `raises_clearly`: the exception is one of the allowed types,
its message is not empty, and the frame that raised it lies in the `dgsnet` package (not in
torch, numpy or PIL).

Non-finite input (decided behaviour, see docs/reliability.md): NaN/Inf *images* or *text
features* make `DGSWrapper.forward` raise `ValueError` naming the batch positions when
`DGSConfig.nonfinite="raise"` (default); with `"ignore"` the non-finite loss goes through to
the caller (the training engine then raises `NonFiniteError` or skips the step). NaN/Inf
*reference gradients* make the rules raise `ValueError`; `nonfinite="ignore"` skips the
surgery for the affected samples. A non-finite *incoming* gradient passes through (loss
scalers rely on seeing it).

`DGSNET_BAD_INPUT_EXAMPLES` raises the Hypothesis example count (default 25).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dgsnet import DGSConfig

PKG = str(Path(__file__).resolve().parents[2] / "dgsnet")
EXAMPLES = int(os.environ.get("DGSNET_BAD_INPUT_EXAMPLES", "25"))
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
B, D = 4, 16


def raises_clearly(fn, types=(TypeError, ValueError), match=None, where=PKG):
    """Call ``fn``; it must raise one of ``types`` with a message, from a frame in ``where``."""
    try:
        fn()
    except types as exc:
        msg = str(exc)
        assert msg.strip(), f"{type(exc).__name__} without a message"
        if match is not None:
            assert match in msg, f"{match!r} not in {msg!r}"
        if where is not None:
            origin = traceback.extract_tb(exc.__traceback__)[-1].filename
            assert origin.startswith(where), f"raised in {origin}, not by dgsnet: {msg}"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"expected {types}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError("no exception: bad input was accepted")


# -- corruptions of a tensor argument ---------------------------------------------------------
CORRUPTIONS = (
    "int",
    "bool",
    "complex",
    "meta",
    "extra_dim",
    "missing_dim",
    "last_dim",
    "str",
    "list",
    "none",
    "ndarray",
    "float",
)


def corrupt(t: torch.Tensor, kind: str):
    if kind == "int":
        return (t * 10).to(torch.int64)
    if kind == "bool":
        return t > 0
    if kind == "complex":
        return t.to(torch.complex64)
    if kind == "meta":
        return t.to("meta")
    if kind == "extra_dim":
        return t.unsqueeze(0)
    if kind == "missing_dim":
        return t[0] if t.dim() > 1 else t.sum()
    if kind == "last_dim":
        return torch.cat([t, t[..., :1]], dim=-1)
    if kind == "str":
        return "a tensor"
    if kind == "list":
        return t.tolist()
    if kind == "none":
        return None
    if kind == "ndarray":
        return t.numpy()
    if kind == "float":
        return 1.5
    raise AssertionError(kind)


# -- junk values for the DGSConfig fields -------------------------------------------------------
FIELDS = [f for f in DGSConfig.__dataclass_fields__]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(
        [
            "auto",
            "bce",
            "ce",
            "reference",
            "invariant",
            "raise",
            "ignore",
            "shared",
            "copy",
            "project_then_align",
            "q_proj",
        ]
    ),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
