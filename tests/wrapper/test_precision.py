"""Mixed precision: bf16 autocast, fp16 autocast with ``torch.amp.GradScaler``, loss scaling.

Tolerances (stated here, checked below):

* surgery alone on bfloat16 tensors vs float32: per-sample ``|a - e| <= 2e-2 * ||e||``
  (bfloat16 keeps 8 significant bits, eps 2^-8 = 3.9e-3; the inputs are rounded once, the rule
  computes in float32 and rounds once on the way out);
* the wrapper's parameter gradients under bf16 autocast vs float32: ``||a - e|| <= 5e-2 ||e||``
  per parameter (measured: <= 2e-2 on the tiny model);
* GradScaler on a float32 model (no autocast): unscaled gradients **bit-identical** to a run
  without the scaler (the scale is a power of two, the alignment is a loss term and the
  projection is linear in the incoming gradient, so nothing in the step sees the scale);
* fp16 autocast + GradScaler vs float32 and vs fp16 autocast without a scaler:
  ``max|a - e| <= 1e-2 max|e|`` per parameter (measured ~2e-3);
* an overflowing scale (inf/NaN gradients after the surgery) is detected by the scaler, the
  step is skipped and the scale reduced: the surgery never raises on a non-finite *incoming*
  gradient (only on non-finite *references*).

CUDA variants are marked ``gpu`` and skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from dgsnet import DGSConfig
from dgsnet.surgery import GradientSurgery, OrthogonalSuppression, PriorAlignment, SurgeryStats
from tests.helpers import batch, build, grads, max_rel_error, rel_norm_errors, zero_grads

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    return DGSConfig(lora_dropout=0.0, align_scale="invariant", **kw)


def _step(w, x, caps, y, autocast=None, scaler=None, opt=None):
    """One backward; returns the (unscaled) parameter gradients."""
    zero_grads(w)
    if autocast is None:
        out = w(x, caps, y)
    else:
        with torch.autocast(x.device.type, dtype=autocast):
            out = w(x, caps, y)
    if scaler is None:
        out.loss.backward()
    else:
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
    return grads(w)


@pytest.fixture(scope="module")
def model_and_fp32_grads():
    w, _ = build(_cfg())
    x, caps, y = batch()
    return w, (x, caps, y), _step(w, x, caps, y)


# ------------------------------------------------------------------------------------------
# bfloat16
# ------------------------------------------------------------------------------------------
def test_surgery_bf16_matches_float32():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 64, generator=g)
    grad = torch.randn(8, 64, generator=g)
    harm = torch.randn(8, 64, generator=g)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = f.detach().to(dtype).clone().requires_grad_(True)
        out = GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": harm.to(dtype)})
        out.backward(grad.to(dtype))
        assert x.grad.dtype == dtype
        results[dtype] = x.grad.float()
    e, a = results[torch.float32], results[torch.bfloat16]
    assert ((a - e).norm(dim=-1) <= 2e-2 * e.norm(dim=-1)).all()


def test_surgery_under_bf16_autocast_matches_float32():
    """Features produced by an autocast matmul (bfloat16) with a float32 reference."""
    g = torch.Generator().manual_seed(1)
    inp, w = torch.randn(6, 32, generator=g), torch.randn(32, 48, generator=g)
    harm = torch.randn(6, 48, generator=g)
    results = {}
    for use_autocast in (False, True):
        x = inp.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
            f = x @ w
            out = GradientSurgery.apply(f, OrthogonalSuppression(), {"harm": harm.to(f.dtype)})
            loss = (out.float() ** 2).sum()
        assert f.dtype == (torch.bfloat16 if use_autocast else torch.float32)
        loss.backward()
        results[use_autocast] = x.grad
    e, a = results[False], results[True]
    assert float((a - e).norm() / e.norm()) <= 2e-2


def test_wrapper_bf16_autocast_gradients_match_float32(model_and_fp32_grads):
    w, (x, caps, y), g32 = model_and_fp32_grads
    gbf = _step(w, x, caps, y, autocast=torch.bfloat16)
    errs = rel_norm_errors(gbf, g32)
    worst = max(errs, key=errs.get)
    assert errs[worst] <= 5e-2, f"{worst}: relative error {errs[worst]:.3e}"
    assert all(v.dtype == torch.float32 for v in gbf.values())  # float32 master weights


# ------------------------------------------------------------------------------------------
# loss scaling
# ------------------------------------------------------------------------------------------
def _scaler(device="cpu", init_scale=2.0**12):
    try:
        return torch.amp.GradScaler(device, init_scale=init_scale)
    except Exception as exc:  # pragma: no cover - older torch without a CPU scaler
        pytest.skip(f"torch.amp.GradScaler({device!r}) is not available: {exc}")


@pytest.mark.parametrize("scale_exp", [1, 12, 24])
def test_grad_scaler_float32_is_bit_identical(model_and_fp32_grads, scale_exp):
    w, (x, caps, y), g32 = model_and_fp32_grads
    opt = torch.optim.SGD(w.trainable_parameters(), lr=0.1)
    gs = _step(w, x, caps, y, scaler=_scaler(init_scale=2.0**scale_exp), opt=opt)
    for k in g32:
        assert torch.equal(gs[k], g32[k]), k


@pytest.mark.parametrize("align_scale", ["reference", "invariant"])
@pytest.mark.parametrize("order", ["align_then_project", "project_then_align"])
def test_grad_scaler_adam_step_equals_unscaled_step(align_scale, order):
    x, caps, y = batch()
    weights = []
    for use_scaler in (False, True):
        w, _ = build(DGSConfig(lora_dropout=0.0, align_scale=align_scale, order=order))
        opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
        scaler = _scaler(init_scale=2.0**16) if use_scaler else None
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            loss = w(x, caps, y).loss
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        weights.append({n: p.detach().clone() for n, p in w.named_trainable_parameters()})
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_fp16_autocast_with_grad_scaler_cpu(model_and_fp32_grads):
    w, (x, caps, y), g32 = model_and_fp32_grads
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"fp16 autocast is not supported on this CPU build: {exc}")
    opt = torch.optim.SGD(w.trainable_parameters(), lr=0.1)
    g16 = _step(w, x, caps, y, autocast=torch.float16)
    g16s = _step(w, x, caps, y, autocast=torch.float16, scaler=_scaler(), opt=opt)
    assert max_rel_error(g16s, g16, torch.float32) <= 1e-2
    assert max_rel_error(g16s, g32, torch.float32) <= 1e-2
    assert all(torch.isfinite(v).all() for v in g16s.values())


def test_grad_scaler_overflow_skips_step_and_surgery_does_not_raise():
    w, _ = build(_cfg())
    x, caps, y = batch()
    opt = torch.optim.SGD(w.trainable_parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in w.named_trainable_parameters()}
    scaler = _scaler(init_scale=2.0**127)
    out = w(x, caps, y)
    # 16 * loss * 2^127 overflows float32: every gradient below it is inf or NaN, and the
    # surgery sees an inf incoming gradient (no exception)
    scaler.scale(16 * out.loss).backward()
    assert not all(torch.isfinite(p.grad).all() for p in w.trainable_parameters())
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**127
    for n, p in w.named_trainable_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} changed on a skipped step"


def test_alignment_inside_the_hook_would_not_commute_with_loss_scaling():
    """Why the wrapper realises the alignment as a loss term: ``PriorAlignment`` *inside*
    ``GradientSurgery`` adds a constant to the scaled gradient, which unscaling divides by the
    scale; ``OrthogonalSuppression`` (linear, reference-scale invariant) commutes."""
    g = torch.Generator().manual_seed(2)
    f, up = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    refs = {"harm": torch.randn(4, 8, generator=g), "help": torch.randn(4, 8, generator=g)}
    for rule, commutes in ((OrthogonalSuppression(), True), (PriorAlignment(0.2), False)):
        res = []
        for scale in (1.0, 2.0**10):
            x = f.clone().requires_grad_(True)
            out = GradientSurgery.apply(x, rule, refs, SurgeryStats())
            (scale * (out * up).sum()).backward()
            res.append(x.grad / scale)
        assert torch.allclose(res[0], res[1], rtol=1e-6, atol=0) == commutes, rule


# ------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------
def _cuda_float32_step():
    """The wrapper and a batch on the GPU, the float32 gradients of one step, an SGD."""
    w, _ = build(_cfg())
    w = w.cuda()
    x, caps, y = batch()
    x, y = x.cuda(), y.cuda()
    g32 = _step(w, x, caps, y)
    opt = torch.optim.SGD(w.trainable_parameters(), lr=0.1)
    return w, x, caps, y, g32, opt


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_float32(dtype):
    w, x, caps, y, g32, opt = _cuda_float32_step()
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    ga = _step(w, x, caps, y, autocast=dtype, scaler=scaler, opt=opt)
    errs = rel_norm_errors(ga, g32)
    assert max(errs.values()) <= 5e-2, errs


@pytest.mark.gpu
@cuda
def test_cuda_grad_scaler_float32_is_bit_identical():
    w, x, caps, y, g32, opt = _cuda_float32_step()
    gs = _step(w, x, caps, y, scaler=torch.amp.GradScaler("cuda", init_scale=2.0**12), opt=opt)
    for k in g32:
        assert torch.equal(gs[k], g32[k]), k
