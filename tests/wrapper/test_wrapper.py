"""DGSWrapper: equivalence with the released reference step, teacher frozenness, encoders,
checkpoints and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.io import CheckpointError
from dgsnet.surgery import Compose, OrthogonalSuppression, PriorAlignment
from tests.helpers import (
    CAPTIONS,
    batch,
    build,
    grads,
    hf_tokenizer,
    make_lora_nonzero,
    open_clip_tokenizer,
    reference_step,
    tiny_hf_clip,
    tiny_open_clip,
    zero_grads,
)


@pytest.mark.parametrize("targets", [None, ["q_proj", "k_proj", "v_proj"]])
def test_equivalence_with_reference_step_float64(targets):
    w, original = build(DGSConfig(lora_dropout=0.0, lora_targets=targets), dtype=torch.float64)
    x, caps, y = batch(dtype=torch.float64)
    ref_loss = reference_step(w, original, x, caps, y)
    ref = grads(w)
    zero_grads(w)
    out = w(x, caps, y)
    out.loss.backward()
    ours = grads(w)
    assert set(ours) == set(ref)
    assert any("lora_A" in n for n in ours)
    for name in ref:
        assert ref[name].abs().max() > 0, name
        err = (ours[name] - ref[name]).abs().max() / ref[name].abs().max()
        assert err <= 1e-10, f"{name}: relative error {err:.3e}"
    assert torch.allclose(out.loss.detach(), ref_loss, rtol=1e-12, atol=0)


def test_feature_gradient_equals_engine_composition_in_both_orders():
    """The wrapper's alignment-as-loss-term equals the engine's Compose rules."""
    for order, make in (
        ("align_then_project", lambda a, s: Compose([a, s])),
        ("project_then_align", lambda a, s: Compose([s, a])),
    ):
        for scale in ("reference", "invariant"):
            cfg = DGSConfig(lora_dropout=0.0, order=order, align_scale=scale)
            w, _ = build(cfg, dtype=torch.float64)
            x, caps, y = batch(dtype=torch.float64)
            captured = {}
            orig = w.encoder.encode_image

            def encode(images, orig=orig, captured=captured):
                f = orig(images)
                if f.requires_grad:  # the student call (the teacher runs without grad)
                    f.register_hook(lambda g, captured=captured: captured.setdefault("g", g))
                    captured["f"] = f
                return f

            w.encoder.encode_image = encode
            out = w(x, caps, y)
            out.loss.backward()
            w.encoder.encode_image = orig
            # the task gradient alone, and the references, by autograd
            f = captured["f"].detach().requires_grad_(True)
            yy = y.double().view(-1, 1)
            task = torch.autograd.grad(F.binary_cross_entropy_with_logits(w.image_head(f), yy), f)[
                0
            ]
            t = w.encode_text(caps).requires_grad_(True)
            harm = torch.autograd.grad(F.binary_cross_entropy_with_logits(w.text_head(t), yy), t)[0]
            ft = w.encode_teacher(x).requires_grad_(True)
            help_ = torch.autograd.grad(
                F.binary_cross_entropy_with_logits(w.teacher_head(ft), yy), ft
            )[0]
            if scale == "invariant":  # per-sample references: the mean's 1/B removed
                harm, help_ = harm * len(y), help_ * len(y)
                rule = make(PriorAlignment(0.2 / len(y), scale=scale), OrthogonalSuppression())
            else:
                rule = make(PriorAlignment(0.2, scale=scale), OrthogonalSuppression())
            expected = rule(task, {"harm": harm, "help": help_})
            torch.testing.assert_close(captured["g"], expected, rtol=1e-10, atol=1e-14)


def test_orders_differ_and_ablations_change_gradients():
    x, caps, y = batch(dtype=torch.float64)
    results = {}
    for name, cfg in {
        "reference": DGSConfig(lora_dropout=0.0),
        "paper": DGSConfig(lora_dropout=0.0, order="project_then_align"),
        "no_suppression": DGSConfig(lora_dropout=0.0, suppression=False),
        "no_alignment": DGSConfig(lora_dropout=0.0, alignment=False),
        "plain": DGSConfig(lora_dropout=0.0, suppression=False, alignment=False),
    }.items():
        w, _ = build(cfg, dtype=torch.float64)
        out = w(x, caps, y)
        out.loss.backward()
        results[name] = torch.cat(
            [p.grad.flatten() for n, p in w.named_trainable_parameters() if "lora" in n]
        )
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(results[a], results[b], rtol=1e-9, atol=0), (a, b)


def test_plain_mode_skips_text_and_teacher():
    w, _ = build(DGSConfig(lora_dropout=0.0, suppression=False, alignment=False))
    x, caps, y = batch()
    out = w(x, None, y)  # no captions needed
    assert set(out.losses) == {"image"}
    out.loss.backward()
    assert w.text_head.weight.grad is None


def test_teacher_stays_frozen_after_500_steps():
    w, original = build(DGSConfig(lora_dropout=0.1))
    original.eval()
    opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
    x, caps, y = batch()
    student_before = w.encode_student(x).detach()
    for step in range(500):
        out = w(x + 0.01 * step % 3, caps, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    teacher = w.encode_teacher(x)
    untouched = original.encode_image(x).detach()
    assert (teacher - untouched).abs().max() <= 1e-6
    assert (w.encode_student(x).detach() - student_before).abs().max() > 1e-3  # it did train
    # base weights untouched, bit for bit (the split attention copies them once)
    sd = dict(w.model.visual.named_parameters())
    assert torch.equal(
        sd["transformer.resblocks.0.mlp.c_fc.base_layer.weight"],
        original.visual.transformer.resblocks[0].mlp.c_fc.weight,
    )


def test_teacher_copy_option_matches_shared():
    x, caps, y = batch(dtype=torch.float64)
    outs = {}
    for mode in ("shared", "copy"):
        w, _ = build(DGSConfig(lora_dropout=0.0, teacher=mode), dtype=torch.float64)
        out = w(x, caps, y)
        out.loss.backward()
        outs[mode] = grads(w)
    for name in outs["shared"]:
        torch.testing.assert_close(outs["copy"][name], outs["shared"][name], rtol=1e-10, atol=1e-14)


def test_only_lora_and_heads_train():
    w, _ = build()
    trainable = {n for n, p in w.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for n in trainable:
        assert "lora_" in n or n.startswith(("image_head", "text_head")), n
    assert not any("lora_" in n for n, _ in w.model.transformer.named_parameters())  # text tower


def test_lora_layers_and_targets_selection():
    w, _ = build(DGSConfig(lora_dropout=0.0, lora_layers=[-1], lora_targets=["q_proj", "v_proj"]))
    assert w.lora_modules == [
        "transformer.resblocks.1.attn.q_proj",
        "transformer.resblocks.1.attn.v_proj",
    ]
    with pytest.raises(ValueError, match="out of range"):
        build(DGSConfig(lora_layers=[5]))
    with pytest.raises(ValueError, match="match no nn.Linear"):
        build(DGSConfig(lora_targets=["nope"]))


def test_text_cache_is_exact_and_bounded():
    w, _ = build(DGSConfig(lora_dropout=0.0, text_cache_size=3))
    caps = ["a", "b", "c", "d", "a"]
    cached = w.encode_text(caps)
    assert len(w.text_cache) == 3
    direct = w.encoder.model.encode_text(open_clip_tokenizer()(caps, context_length=16))
    torch.testing.assert_close(cached, direct.detach(), rtol=0, atol=1e-6)
    # a second call is served from the cache and equal
    torch.testing.assert_close(w.encode_text(["d", "a"]), cached[[3, 4]], rtol=0, atol=0)


def test_text_inputs_tokens_and_features_agree():
    w, _ = build()
    caps = CAPTIONS[:3]
    tok = open_clip_tokenizer()(caps, context_length=16)
    a = w.encode_text(caps)
    b = w.encode_text(tok)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(w.encode_text(a), a)


def test_long_captions_are_truncated():
    w, _ = build()
    long = " ".join(["word"] * 500)
    feats = w.encode_text([long])
    assert feats.shape == (1, w.feature_dim)


def test_predict_is_student_only():
    w, _ = build()
    x, _, _ = batch()
    torch.testing.assert_close(w.predict(x), w.image_head(w.encode_student(x)).detach())


def test_predict_is_deterministic_in_train_mode_and_keeps_the_mode():
    w, _ = build(DGSConfig(lora_dropout=0.5))
    x, _, _ = batch()
    w.train()
    a, b = w.predict(x), w.predict(x)
    assert torch.equal(a, b) and w.training
    w.eval()
    assert torch.equal(w.predict(x), a) and not w.training


def test_stats_after_backward():
    w, _ = build()
    x, caps, y = batch()
    out = w(x, caps, y)
    assert out.stats == {}
    out.loss.backward()
    s = out.stats
    for key in ("grad_norm_in", "grad_norm_out", "removed_fraction", "cos_harm", "cos_help"):
        assert key in s and isinstance(s[key], float)
    assert -1 <= s["cos_harm"] <= 1


def test_multiclass_cross_entropy_and_custom_loss():
    w, _ = build(DGSConfig(num_classes=3, lora_dropout=0.0))
    x, caps, _ = batch()
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    out = w(x, caps, y)
    assert out.logits.shape == (6, 3)
    out.loss.backward()
    with pytest.raises(ValueError, match="0..2"):
        w(x, caps, torch.tensor([0, 1, 3, 0, 0, 0]))

    # custom loss: reference gradients by autograd; equals the closed form for the same loss
    def bce(logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels.float().view_as(logits))

    x, caps, y = batch(dtype=torch.float64)
    gs = []
    for loss_fn in (None, bce):
        model = tiny_open_clip(dtype=torch.float64)
        w = DGSWrapper(model, open_clip_tokenizer(), DGSConfig(lora_dropout=0.0), loss_fn=loss_fn)
        torch.manual_seed(3)
        for head in (w.image_head, w.text_head, w.teacher_head):
            torch.nn.init.normal_(head.weight, 0, 0.5)
        make_lora_nonzero(w)
        w(x, caps, y).loss.backward()
        gs.append(grads(w))
    for n in gs[0]:
        torch.testing.assert_close(gs[1][n], gs[0][n], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "images, text, labels, match",
    [
        (torch.randn(6, 3, 16, 16), CAPTIONS, [0, 1, 1, 0, 1, 0], r"shape \(B, 3, 32, 32\)"),
        (torch.randn(6, 32, 32), CAPTIONS, [0, 1, 1, 0, 1, 0], "shape"),
        (torch.randn(6, 3, 32, 32), CAPTIONS[:5], [0, 1, 1, 0, 1, 0], "5 captions"),
        (torch.randn(6, 3, 32, 32), CAPTIONS, [0, 1, 1, 0, 1], r"labels must have shape \(6,\)"),
        (torch.randn(6, 3, 32, 32), CAPTIONS, [0, 1, 2, 0, 1, 0], r"\{0, 1\}"),
        (torch.randn(6, 3, 32, 32), CAPTIONS, [0, 1, -1, 0, 1, 0], r"\{0, 1\}"),
        (torch.randn(6, 3, 32, 32), CAPTIONS, [0, 1, 0.5, 0, 1, 0], "whole class"),
        (torch.randn(6, 3, 32, 32), [], [0, 1, 1, 0, 1, 0], "empty caption list"),
        (torch.randn(6, 3, 32, 32), "a cat", [0, 1, 1, 0, 1, 0], "single string"),
        (torch.randn(6, 3, 32, 32), [1, 2, 3, 4, 5, 6], [0, 1, 1, 0, 1, 0], "strings"),
        (torch.randn(0, 3, 32, 32), [], [], "batch size 0"),
        ([[1.0]], CAPTIONS, [0, 1, 1, 0, 1, 0], "tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(images, text, labels, match):
    w, _ = build()
    with pytest.raises((ValueError, TypeError), match=match):
        w(images, text, labels)


def test_precomputed_text_features_of_wrong_dim():
    w, _ = build()
    x, _, y = batch()
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        w(x, torch.randn(6, 7), y)


def test_save_load_round_trip(tmp_path):
    w, _ = build()
    x, caps, y = batch()
    w.save_pretrained(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "dgs_config.json").read_text())
    assert meta["format"] == "dgsnet" and len(meta["weights_sha256"]) == 64
    loaded = DGSWrapper.from_pretrained(
        tmp_path / "run", tiny_open_clip(seed=0), open_clip_tokenizer()
    )
    assert torch.equal(loaded.predict(x), w.predict(x))
    torch.testing.assert_close(loaded.encode_teacher(x), w.encode_teacher(x))
    assert loaded.config == w.config
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_load_into_other_shape_or_damaged_checkpoint_fails(tmp_path):
    w, _ = build()
    w.save_pretrained(tmp_path / "run")
    with pytest.raises(CheckpointError, match="feature_dim"):
        DGSWrapper.from_pretrained(
            tmp_path / "run", tiny_open_clip(embed_dim=24), open_clip_tokenizer()
        )
    with pytest.raises(CheckpointError, match="num_blocks"):
        DGSWrapper.from_pretrained(
            tmp_path / "run", tiny_open_clip(layers=3), open_clip_tokenizer()
        )
    # tampered weights
    path = tmp_path / "run" / "dgs_weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        DGSWrapper.from_pretrained(tmp_path / "run", tiny_open_clip(), open_clip_tokenizer())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="checksum"):
        DGSWrapper.from_pretrained(tmp_path / "run", tiny_open_clip(), open_clip_tokenizer())
    (tmp_path / "run" / "dgs_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        DGSWrapper.from_pretrained(tmp_path / "run", tiny_open_clip(), open_clip_tokenizer())
    with pytest.raises(CheckpointError, match="no dgs_config.json"):
        DGSWrapper.from_pretrained(tmp_path / "nothing", tiny_open_clip(), open_clip_tokenizer())


def test_missing_or_unexpected_keys_are_never_ignored(tmp_path):
    from safetensors.torch import load_file, save_file

    from dgsnet.io import sha256_file

    w, _ = build()
    run = tmp_path / "run"
    w.save_pretrained(run)
    tensors = load_file(run / "dgs_weights.safetensors")
    for mutate, match in (
        (lambda t: t.pop("image_head.bias"), "missing"),
        (lambda t: t.__setitem__("extra.weight", torch.zeros(1)), "unexpected"),
    ):
        t = dict(tensors)
        mutate(t)
        save_file(t, run / "dgs_weights.safetensors")
        meta = json.loads((run / "dgs_config.json").read_text())
        meta["weights_sha256"] = sha256_file(run / "dgs_weights.safetensors")
        (run / "dgs_config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=match):
            DGSWrapper.from_pretrained(run, tiny_open_clip(), open_clip_tokenizer())


def test_config_json_round_trip_and_unknown_keys(tmp_path):
    cfg = DGSConfig(order="project_then_align", align_scale="invariant", lora_layers=[-2, -1])
    assert DGSConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert DGSConfig.from_json(tmp_path / "c.json") == cfg
    data = cfg.to_dict()
    data["from_the_future"] = 1
    with pytest.warns(UserWarning, match="from_the_future"):
        assert DGSConfig.from_dict(data) == cfg
    ref = DGSConfig.reference()
    assert ref.lora_targets == ("q_proj", "k_proj", "v_proj") and ref.lora_rank == 6


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_classes=0),
        dict(lora_rank=0),
        dict(lora_dropout=1.0),
        dict(align_weight=-1.0),
        dict(order="sideways"),
        dict(align_scale="per_rank"),
        dict(teacher="clone"),
        dict(eps=float("nan")),
        dict(num_classes=3, loss="bce"),
        dict(lora_targets="q_proj"),
        dict(suppression=1),
        dict(text_cache_size=-1),
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match="DGSConfig"):
        DGSConfig(**kwargs)


# ------------------------------------------------------------------------------------------
# Hugging Face CLIP
# ------------------------------------------------------------------------------------------
def test_hugging_face_clip_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    model = tiny_hf_clip()
    original = copy.deepcopy(model)
    w = DGSWrapper(model, hf_tokenizer(), DGSConfig(lora_dropout=0.0))
    assert w.encoder.kind == "hf"
    assert all(n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj") for n in w.lora_modules)
    make_lora_nonzero(w)
    x, caps, y = batch()
    out = w(x, caps, y)
    out.loss.backward()
    assert all(p.grad is not None for p in w.trainable_parameters())
    teacher = w.encode_teacher(x)
    expect = original.get_image_features(pixel_values=x).pooler_output
    torch.testing.assert_close(teacher, expect.detach(), rtol=0, atol=1e-6)
    w.save_pretrained(tmp_path / "hf")
    loaded = DGSWrapper.from_pretrained(tmp_path / "hf", tiny_hf_clip(), hf_tokenizer())
    assert torch.equal(loaded.predict(x), w.predict(x))
    with pytest.raises(CheckpointError, match="kind"):
        DGSWrapper.from_pretrained(tmp_path / "hf", tiny_open_clip(), open_clip_tokenizer())


def test_unknown_model_type_is_refused():
    with pytest.raises(TypeError, match="DualEncoder"):
        DGSWrapper(torch.nn.Linear(3, 3))


def test_fit_teacher_head_learns_and_fills_cache():
    w, _ = build()
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loader = [
        (x[i : i + 4], CAPTIONS[:4], y[i : i + 4], torch.arange(i, i + 4)) for i in range(0, 16, 4)
    ]
    hist = w.fit_teacher_head(loader, epochs=3, lr=1e-2)
    assert len(hist) == 3 and hist[-1] < hist[0]
    assert not w.teacher_head.weight.requires_grad
    assert len(w.teacher_cache) == 16
    cached = w.teacher_cache.lookup(torch.arange(16))
    torch.testing.assert_close(cached, w.teacher_head(w.encode_teacher(x)), rtol=0, atol=1e-6)
