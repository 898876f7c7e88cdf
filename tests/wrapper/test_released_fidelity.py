"""Fidelity to the released DGS-Net training code: its LoRA parametrisation (alpha / sqrt(r) on
q/k/v of every vision block, dropout on the LoRA branch's input), feature distillation, and
checkpoints written before ``lora_scaling`` existed."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.wrapper import CONFIG_NAME
from tests.helpers.models import batch, make_lora_nonzero, open_clip_tokenizer, tiny_open_clip
from tests.helpers.released import QKV, copy_lora_from_wrapper, released_clip, released_layers

LAYERS = 3


def build(config, seed=0, dtype=torch.float64):
    """A wrapper with non-zero LoRA B and heads, and the untouched model it started from."""
    model = tiny_open_clip(seed=seed, dtype=dtype, layers=LAYERS)
    pristine = tiny_open_clip(seed=seed, dtype=dtype, layers=LAYERS)
    w = DGSWrapper(model, open_clip_tokenizer(), config)
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        for head in (w.image_head, w.text_head, w.teacher_head):
            head.weight.normal_(0, 0.5)
            head.bias.normal_(0, 0.1)
    make_lora_nonzero(w, scale=0.2)
    return w, pristine


def lora_grads(w):
    return {
        n: p.grad.detach().clone()
        for n, p in w.named_trainable_parameters()
        if "lora_" in n and p.grad is not None
    }


def released_grads(released):
    out = {}
    for name, layer in released_layers(released).items():
        out[f"{name}.A"] = layer.w_lora_A.grad.detach().clone()
        out[f"{name}.B"] = layer.w_lora_B.grad.detach().clone()
    return out


def wrapper_grads_by_layer(w):
    tower = w.encoder.image_tower
    out = {}
    for name in w.lora_modules:
        layer = tower.get_submodule(name)
        out[f"{name}.A"] = layer.lora_A["default"].weight.grad.detach().clone()
        out[f"{name}.B"] = layer.lora_B["default"].weight.grad.detach().clone()
    return out


def assert_close(a, b, tol=1e-10):
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max())
    assert err <= tol, f"max abs difference {err:.3g} > {tol:g}"


# ------------------------------------------------------------------------------------------
# (a) the released LoRA arithmetic
# ------------------------------------------------------------------------------------------
def test_reference_config_uses_the_released_scaling_and_targets():
    ref = DGSConfig.reference()
    assert ref.lora_scaling == "rslora" and ref.lora_targets == tuple(QKV)
    assert (ref.lora_rank, ref.lora_alpha, ref.lora_dropout) == (6, 6.0, 0.8)
    assert DGSConfig().lora_scaling == "standard"
    from dgsnet.presets import get_preset

    assert get_preset("aigibench-setting2").dgs_config().lora_scaling == "rslora"


def test_wrapper_adapts_exactly_q_k_v_of_every_block():
    w, _ = build(DGSConfig.reference())
    assert w.lora_modules == [
        f"transformer.resblocks.{i}.attn.{p}" for i in range(LAYERS) for p in QKV
    ]
    for name in w.lora_modules:
        layer = w.encoder.image_tower.get_submodule(name)
        assert layer.scaling["default"] == pytest.approx(6 / math.sqrt(6), rel=1e-15)
    # nothing else in the image tower carries LoRA: out projection and MLP untouched
    adapted = {
        n.rsplit(".lora_", 1)[0]
        for n, _ in w.encoder.image_tower.named_parameters()
        if "lora_" in n
    }
    assert adapted == set(w.lora_modules)


@pytest.mark.parametrize("loss_kind", ["features", "bce"])
def test_released_arithmetic_matches_wrapper_float64(loss_kind):
    """Student features and LoRA gradients of DGSConfig.reference() equal the released
    arithmetic (built here on its own) to 1e-10, eval mode (no dropout)."""
    w, pristine = build(DGSConfig.reference())
    released = released_clip(pristine, r=6, alpha=6.0, dropout=0.8)
    copy_lora_from_wrapper(released, w)
    x, _, y = batch(dtype=torch.float64)
    w.eval()
    released.eval()  # our test layers never merge on their own: no hidden state change
    f_w = w.encode_student(x)
    f_r = released.encode_image(x)
    assert_close(f_w, f_r)
    # the LoRA branch matters here: without it the features are far apart
    with torch.no_grad():
        teacher = w.encode_teacher(x)
    assert float((f_r.detach() - teacher).norm() / teacher.norm()) > 0.05
    if loss_kind == "features":
        c = torch.randn(f_w.shape, generator=torch.Generator().manual_seed(3), dtype=f_w.dtype)
        loss_w, loss_r = (f_w * c).sum() + f_w.pow(2).sum(), (f_r * c).sum() + f_r.pow(2).sum()
    else:  # the plain wrapper step's loss: BCE of the image head
        loss_w = F.binary_cross_entropy_with_logits(w.image_head(f_w).flatten(), y.double())
        loss_r = F.binary_cross_entropy_with_logits(w.image_head(f_r).flatten(), y.double())
    loss_w.backward()
    loss_r.backward()
    gw, gr = wrapper_grads_by_layer(w), released_grads(released)
    assert set(gw) == set(gr) and len(gw) == 2 * 3 * LAYERS
    for k in gw:
        assert float(gw[k].abs().max()) > 0, k
        assert_close(gw[k], gr[k])


def test_standard_scaling_does_not_match_the_released_arithmetic():
    """The comparison above can fail: alpha / r differs from the released alpha / sqrt(r)."""
    w, pristine = build(DGSConfig.reference(lora_scaling="standard"))
    released = released_clip(pristine)
    copy_lora_from_wrapper(released, w)
    x, _, _ = batch(dtype=torch.float64)
    w.eval()
    released.eval()
    with torch.no_grad():
        assert float((w.encode_student(x) - released.encode_image(x)).abs().max()) > 1e-3


def test_released_arithmetic_matches_in_training_mode_with_dropout():
    """Dropout 0.8 in training mode: the same random masks (same seed, the same call order
    q, k, v per block) give the same features and gradients."""
    w, pristine = build(DGSConfig.reference())
    released = released_clip(pristine)
    copy_lora_from_wrapper(released, w)
    x, _, _ = batch(dtype=torch.float64)
    w.train()
    released.train()
    torch.manual_seed(11)
    f_w = w.encode_student(x)
    torch.manual_seed(11)
    f_r = released.encode_image(x)
    assert_close(f_w, f_r)
    with torch.no_grad():
        w.eval()
        assert float((w.encode_student(x) - f_w).abs().max()) > 1e-3  # dropout did act
    f_w.pow(2).sum().backward()
    f_r.pow(2).sum().backward()
    gw, gr = wrapper_grads_by_layer(w), released_grads(released)
    for k in gw:
        assert_close(gw[k], gr[k])


def test_dropout_applies_to_the_lora_branch_input_only():
    w, _ = build(DGSConfig.reference())
    w.train()
    layer = w.encoder.image_tower.get_submodule("transformer.resblocks.0.attn.v_proj")
    base = layer.base_layer
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(4, 5, base.in_features, dtype=torch.float64)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    dropped = F.dropout(x, p=0.8, training=True)
    assert float((dropped == 0).double().mean()) > 0.5  # the mask is there
    expected = F.linear(x, base.weight, base.bias) + math.sqrt(6) * (dropped @ a.T @ b.T)
    assert_close(out, expected, 1e-12)
    # in eval mode no dropout at all
    layer.eval()
    plain = F.linear(x, base.weight, base.bias) + math.sqrt(6) * (x @ a.T @ b.T)
    assert_close(layer(x), plain, 1e-12)


# ------------------------------------------------------------------------------------------
# (b) feature distillation
# ------------------------------------------------------------------------------------------
def _feature_vjp(w, x, grad_f):
    """LoRA gradients of <f, grad_f>: what arrives at the parameters when grad_f reaches f."""
    w.zero_grad(set_to_none=True)
    f = w.encode_student(x)
    f.backward(grad_f)
    return lora_grads(w)


def _bce_feature_grad(head, f, y):
    z = head(f).flatten()
    return ((torch.sigmoid(z) - y.double()) / f.shape[0]).unsqueeze(1) * head.weight


@pytest.mark.parametrize("weight, layers", [(0.7, None), (3.0, None), (0.7, [-1])])
def test_feature_distillation_alone_has_the_analytic_gradient(weight, layers):
    """``layers=[-1]``: student and teacher share the frozen trunk below the last block."""
    cfg = DGSConfig.reference(
        suppression=False,
        alignment=False,
        lora_dropout=0.0,
        feature_distill=weight,
        lora_layers=layers,
    )
    w, _ = build(cfg)
    x, _, y = batch(dtype=torch.float64)
    out = w(x, None, y)  # alone: no captions needed
    assert set(out.losses) == {"image", "distill"}
    with torch.no_grad():
        f = w.encode_student(x)
        f_t = w.encode_teacher(x)
    mse = ((f - f_t) ** 2).sum() / f.numel()  # mean over batch and feature dims
    assert float((out.losses["distill"] - mse).abs()) < 1e-13
    bce = F.binary_cross_entropy_with_logits(w.image_head(f).flatten(), y.double())
    assert float((out.loss - (bce + weight * mse)).detach().abs()) < 1e-12
    w.zero_grad(set_to_none=True)
    out.loss.backward()
    got = lora_grads(w)
    analytic = _bce_feature_grad(w.image_head, f, y) + 2 * weight * (f - f_t) / f.numel()
    want = _feature_vjp(w, x, analytic)
    assert set(got) == set(want) and got
    for k in got:
        assert_close(got[k], want[k], 1e-11)


@pytest.mark.parametrize("alignment", [True, False])
def test_feature_distillation_with_surgery_bypasses_the_projection(alignment):
    """DGS + FD: the gradient is the DGS gradient plus the un-projected FD gradient
    2 w (f - f_T) / (B D); projecting the FD gradient too would give something else."""
    weight = 2.0
    x, caps, y = batch(dtype=torch.float64)
    results = {}
    for fd in (0.0, weight):
        cfg = DGSConfig.reference(alignment=alignment, lora_dropout=0.0, feature_distill=fd)
        w, _ = build(cfg)
        out = w(x, caps, y)
        assert ("distill" in out.losses) == (fd > 0) and ("align" in out.losses) == alignment
        w.zero_grad(set_to_none=True)
        out.loss.backward()
        results[fd] = lora_grads(w)
    with torch.no_grad():
        f = w.encode_student(x)
        f_t = w.encode_teacher(x)
        t = w.encode_text(caps)
    g_fd = 2 * weight * (f - f_t) / f.numel()
    raw = _feature_vjp(w, x, g_fd)
    # the harmful direction of the text head's gradient, and the FD gradient projected off it
    g_text = _bce_feature_grad(w.text_head, t, y)
    u = g_text.clamp_min(0)
    u = u / (u.norm(dim=1, keepdim=True) + 1e-6)
    projected = _feature_vjp(w, x, g_fd - (g_fd * u).sum(1, keepdim=True) * u)
    differs = 0.0
    for k in raw:
        assert_close(results[weight][k], results[0.0][k] + raw[k], 1e-11)
        differs = max(differs, float((raw[k] - projected[k]).abs().max()))
    assert differs > 1e-6  # the choice is visible: projecting FD would change the gradient


def test_feature_distillation_with_index_ignores_the_logit_cache():
    """The teacher cache holds logits only; FD needs the teacher's features every step."""
    cfg = DGSConfig.reference(lora_dropout=0.0, feature_distill=1.0)
    w, _ = build(cfg)
    x, caps, y = batch(dtype=torch.float64)
    idx = torch.arange(6)
    first = w(x, caps, y, index=idx)
    assert len(w.teacher_cache) == 6  # alignment's logits were cached
    second = w(x, caps, y, index=idx)
    assert float((first.loss - second.loss).abs()) == 0
    assert float((first.losses["distill"] - second.losses["distill"]).abs()) == 0
    assert float(first.losses["distill"]) > 0


def test_feature_distillation_validation():
    with pytest.raises(ValueError, match="feature_distill"):
        DGSConfig(feature_distill=-0.1)
    with pytest.raises(ValueError, match="feature_distill"):
        DGSConfig(feature_distill=float("inf"))
    with pytest.raises(ValueError, match="lora_scaling"):
        DGSConfig(lora_scaling="sqrt")


# ------------------------------------------------------------------------------------------
# (c) checkpoints and the scaling
# ------------------------------------------------------------------------------------------
def test_checkpoint_records_the_scaling(tmp_path):
    w, _ = build(DGSConfig.reference(lora_rank=4, lora_dropout=0.0))
    w.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["config"]["lora_scaling"] == "rslora"
    again = DGSWrapper.from_pretrained(
        tmp_path, tiny_open_clip(dtype=torch.float64, layers=LAYERS), open_clip_tokenizer()
    )
    layer = again.encoder.image_tower.get_submodule(again.lora_modules[0])
    assert layer.scaling["default"] == pytest.approx(6 / 2)
    x, _, _ = batch(dtype=torch.float64)
    assert_close(again.predict(x), w.predict(x), 1e-12)


def test_legacy_checkpoint_without_lora_scaling_loads_as_alpha_over_r(tmp_path):
    """A checkpoint written before the field existed (no ``lora_scaling``, an empty ``extra``)
    loads with alpha / r, the scaling it was trained with, and without a warning."""
    w, _ = build(DGSConfig.reference(lora_rank=4, lora_scaling="standard", lora_dropout=0.0))
    w.save_pretrained(tmp_path)
    path = tmp_path / CONFIG_NAME
    meta = json.loads(path.read_text())
    del meta["config"]["lora_scaling"], meta["config"]["feature_distill"]
    meta["config"]["extra"] = {}
    path.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = DGSWrapper.from_pretrained(
            tmp_path, tiny_open_clip(dtype=torch.float64, layers=LAYERS), open_clip_tokenizer()
        )
    assert again.config.lora_scaling == "standard" and again.config.feature_distill == 0.0
    for name in again.lora_modules:
        assert again.encoder.image_tower.get_submodule(name).scaling["default"] == 6 / 4
    x, _, _ = batch(dtype=torch.float64)
    assert_close(again.predict(x), w.predict(x), 1e-12)


def test_retired_extra_key():
    assert not hasattr(DGSConfig(), "extra")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DGSConfig.from_dict({"extra": {}}) == DGSConfig()
    with pytest.warns(UserWarning, match="extra"):  # content that nothing ever read
        assert DGSConfig.from_dict({"extra": {"note": 1}}) == DGSConfig()


# ------------------------------------------------------------------------------------------
# the backbone's activation: OpenAI CLIP uses QuickGELU
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, quick",
    [("ViT-L-14@openai", True), ("ViT-B-32@openai", True), ("ViT-L-14@laion2b_s32b_b82k", False)],
)
def test_build_model_uses_quick_gelu_for_openai_weights(monkeypatch, spec, quick):
    """open_clip 3 builds "ViT-L-14" with nn.GELU and only warns when the OpenAI weights (trained
    with QuickGELU, as the released code runs them) are loaded into it; dgsnet asks for it."""
    import open_clip

    from dgsnet import training

    seen = {}

    def fake(name, pretrained=None, **kwargs):
        seen.update(kwargs, name=name, pretrained=pretrained)
        return tiny_open_clip(), None, (lambda img: img)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    training.build_model(spec)
    assert seen["force_quick_gelu"] is quick and seen["name"] == spec.split("@")[0]
