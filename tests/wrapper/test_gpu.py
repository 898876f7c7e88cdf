"""CUDA checks (``pytest -m gpu``; skipped where no CUDA device is present).

* a wrapper step on CUDA (float32) equals the reference step on the CPU in float64;
* the fused (``torch.compile``) surgery equals the eager one on CUDA, alone and in the step;
* a bf16-autocast step runs and its gradients are close to the float32 step's.

Each check is a function of the device, so that its logic can be exercised on the CPU too
(``_check_*("cpu")``) where no GPU is at hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from dgsnet import DGSConfig, GradientSurgery, OrthogonalSuppression
from dgsnet.surgery import fuse
from tests.helpers import batch, build, grads, reference_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions (float32 means float32 in these comparisons)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_errors(
    ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
) -> dict[str, float]:
    assert set(ours) == set(ref)
    out = {}
    for name in ref:
        r = ref[name].double().cpu()
        assert r.abs().max() > 0, name
        out[name] = float((ours[name].double().cpu() - r).abs().max() / r.abs().max())
    return out


def _device_wrapper(config: DGSConfig, device: str, dtype: torch.dtype = torch.float32):
    """The tests' float64 wrapper (same weights as ``build``), cast and moved."""
    w, original = build(config, dtype=torch.float64)
    return w.to(device=device, dtype=dtype), original


# ------------------------------------------------------------------------------------------
def _check_step_equals_cpu_float64_reference(device: str) -> None:
    x, caps, y = batch(dtype=torch.float64)
    w64, original = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64)
    ref_loss = reference_step(w64, original, x, caps, y)
    ref = grads(w64)

    w, _ = _device_wrapper(DGSConfig(lora_dropout=0.0), device)
    with exact_float32():
        out = w(x.float().to(device), caps, y)
        out.loss.backward()
    assert out.loss.device.type == torch.device(device).type
    errors = relative_errors(grads(w), ref)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (
        f"{worst}: relative error {errors[worst]:.2e} (float32 {device} vs float64 cpu)"
    )
    assert abs(float(out.loss.detach()) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))


def _check_fused_equals_eager(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        x = torch.randn(32, 768, generator=g).to(device=device, dtype=dtype)
        harm = torch.randn(32, 768, generator=g).to(device=device, dtype=dtype)
        no_harm = torch.randn(768, generator=g).abs().neg()  # relu(harm) = 0: no surgery
        harm[3] = no_harm.to(device=device, dtype=dtype)
        up = torch.randn(32, 768, generator=g).to(device=device, dtype=dtype)
        results = []
        for rule in (OrthogonalSuppression(), fuse(OrthogonalSuppression())):
            xi = x.clone().requires_grad_(True)
            GradientSurgery.apply(xi, rule, {"harm": harm}).backward(up)
            results.append(xi.grad)
        eager, fused = results
        assert fused.dtype == eager.dtype == dtype and fused.device == eager.device
        scale = eager.float().abs().max()
        err = float((fused.float() - eager.float()).abs().max() / scale)
        assert err <= tol, f"{dtype}: fused vs eager relative error {err:.2e}"
        torch.testing.assert_close(fused[3], up[3], rtol=0, atol=0)  # harm <= 0: untouched

    # and inside the wrapper's step
    x, caps, y = batch()
    step = {}
    for fused_flag in (False, True):
        w, _ = _device_wrapper(DGSConfig(lora_dropout=0.0, fused=fused_flag), device)
        with exact_float32():
            w(x.to(device), caps, y).loss.backward()
        step[fused_flag] = grads(w)
    errors = relative_errors(step[True], step[False])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, (
        f"{worst}: fused vs eager step, relative error {errors[worst]:.2e}"
    )


def _check_bf16_autocast_close_to_float32(device: str) -> None:
    x, caps, y = batch()
    result = {}
    for amp in (False, True):
        w, _ = _device_wrapper(DGSConfig(lora_dropout=0.0), device)
        kind = torch.device(device).type
        ctx = torch.autocast(kind, dtype=torch.bfloat16) if amp else exact_float32()
        with ctx:
            out = w(x.to(device), caps, y)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert out.stats, "surgery stats missing after backward"
        result[amp] = grads(w)
    for name, g32 in result[False].items():
        g16 = result[True][name]
        assert g16.dtype == g32.dtype == torch.float32, name  # parameters and grads stay float32
        assert torch.isfinite(g16).all(), name
        a, b = g16.double().flatten(), g32.double().flatten()
        cos = float(a @ b / (a.norm() * b.norm()))
        ratio = float(a.norm() / b.norm())
        assert cos >= 0.99 and 0.9 <= ratio <= 1.1, (
            f"{name}: cosine {cos:.4f}, norm ratio {ratio:.3f}"
        )


# ------------------------------------------------------------------------------------------
def test_cuda_step_equals_cpu_float64_reference():
    _check_step_equals_cpu_float64_reference("cuda")


def test_cuda_fused_surgery_equals_eager():
    _check_fused_equals_eager("cuda")


def test_cuda_bf16_autocast_step_close_to_float32():
    _check_bf16_autocast_close_to_float32("cuda")


def _check_user_model_placement(device: str) -> None:
    """The border with a user's model on a device: stage 1 moves CPU batches there; moving
    the user's CLIP alone is named in the error; moving the wrapper moves every head; the
    user's forward equals `predict` there."""
    from torch import nn

    from dgsnet import DGSWrapper
    from tests.helpers import tiny_open_clip

    model, fc = tiny_open_clip(), nn.Linear(16, 1)
    dgs = DGSWrapper(model, None, DGSConfig(suppression=False), image_head=fc)
    x, _, y = batch()
    model.to(device)  # the user's CLIP only
    fc.to(device)
    if device != "cpu":
        with pytest.raises(ValueError, match="DGS text head .* on cpu"):
            dgs(x.to(device), None, y)
    dgs.to(device)
    hist = dgs.fit_teacher_head([(x, y)], epochs=1, lr=1e-2)  # CPU batches, moved
    assert len(hist) == 1
    dgs(x.to(device), None, y.to(device)).loss.backward()
    dgs.eval()
    with torch.no_grad():
        mine = fc(model.encode_image(x.to(device)))
    torch.testing.assert_close(mine, dgs.predict(x.to(device)), rtol=0, atol=1e-6)


def test_user_model_placement_on_cuda():
    _check_user_model_placement("cuda")
