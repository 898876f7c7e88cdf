"""Error measures shared by the numerical tests."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def max_rel_error(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], dtype: torch.dtype | None = None
) -> float:
    """``max_k max|a_k - e_k| / max|e_k|`` over the keys of ``expected`` (a zero ``e_k``
    counts as 1e-300), computed in ``dtype`` when given, else in the tensors' own dtype."""

    def cast(t: Tensor) -> Tensor:
        return t if dtype is None else t.to(dtype)

    return max(
        float(
            (cast(actual[k]) - cast(expected[k])).abs().max()
            / cast(expected[k]).abs().max().clamp_min(1e-300)
        )
        for k in expected
    )


def rel_norm_errors(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> dict[str, float]:
    """``||a_k - e_k|| / ||e_k||`` per key of ``expected``, in float32."""
    return {
        k: float((actual[k].float() - expected[k].float()).norm() / expected[k].float().norm())
        for k in expected
    }


def f64(t: Tensor) -> Tensor:
    """``t`` detached, in float64."""
    return t.detach().to(torch.float64)


def assert_close_rows(
    actual: Tensor,
    expected: Tensor,
    scale_from: Tensor,
    rtol: float,
    atol: float = 0.0,
    msg: str = "",
) -> None:
    """Per-sample ``|a - e| <= atol + rtol * max(||scale_from||, ||e||)``, in float64."""
    a, e = f64(actual), f64(expected)
    s = f64(scale_from)
    lead = max(a.dim() - 1, 0)
    a = a.reshape(-1, a.shape[-1]) if lead else a.reshape(1, -1)
    e = e.reshape(a.shape)
    s = s.reshape(a.shape)
    scale = torch.maximum(
        torch.linalg.vector_norm(s, dim=-1, keepdim=True),
        torch.linalg.vector_norm(e, dim=-1, keepdim=True),
    )
    dev = (a - e).abs()
    tol = atol + rtol * scale
    ok = bool((dev <= tol).all())
    assert ok, (
        f"{msg} max abs deviation {float(dev.max()):.3e}, max relative "
        f"{float((dev / scale.clamp_min(1e-300)).max()):.3e} > rtol {rtol:g}"
    )


def low_precision_tol(dtype: torch.dtype) -> float:
    """The relative tolerance of one rounding-heavy computation in ``dtype``."""
    return {torch.float16: 4e-3, torch.bfloat16: 3.2e-2, torch.float32: 1e-5, torch.float64: 1e-11}[
        dtype
    ]
