"""Every shortcut the wrapper takes is exact: equality against the unoptimised path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgsnet import DGSConfig
from dgsnet.heads import autograd_input_grad, linear_input_grad
from tests.helpers import batch, build, grads


def run(cfg, index=None, repeat=1, dtype=torch.float64):
    w, _ = build(cfg, dtype=dtype, layers=3)
    x, caps, y = batch(dtype=dtype)
    for _ in range(repeat):
        for p in w.parameters():
            p.grad = None
        out = w(x, caps, y, index=index)
        out.loss.backward()
    return w, grads(w), out


@pytest.mark.parametrize("kind, classes", [("bce", 1), ("ce", 4)])
def test_closed_form_head_gradient_equals_autograd(kind, classes):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, classes).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.randint(0, 2 if kind == "bce" else classes, (5,))

    def loss_fn(z, t):
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(z, t.double().view_as(z))
        return F.cross_entropy(z, t)

    expected = autograd_input_grad(head, x, y, loss_fn)
    got = linear_input_grad(head, head(x), y, kind)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    if kind == "bce":  # (sigmoid(z) - y) / B times the weight row: one scalar per sample
        z = head(x).detach()
        scalar = (torch.sigmoid(z) - y.double().view(-1, 1)) / 5
        torch.testing.assert_close(got, scalar * head.weight.detach(), rtol=1e-12, atol=1e-15)


def test_closed_form_heads_equal_autograd_heads_in_the_step():
    _, a, _ = run(DGSConfig(lora_dropout=0.0, closed_form_heads=True))
    _, b, _ = run(DGSConfig(lora_dropout=0.0, closed_form_heads=False))
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-16)


def test_shared_trunk_equals_separate_teacher_forward():
    cfg = dict(lora_dropout=0.0, lora_layers=[-1])
    w, a, _ = run(DGSConfig(shared_trunk=True, **cfg))
    assert w.teacher.trunk_start == 2
    _, b, _ = run(DGSConfig(shared_trunk=False, **cfg))
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_teacher_cache_equals_teacher_forward():
    idx = torch.arange(6)
    w, cached, _ = run(DGSConfig(lora_dropout=0.0), index=idx, repeat=2)
    assert len(w.teacher_cache) == 6
    _, fresh, _ = run(DGSConfig(lora_dropout=0.0, teacher_cache=False), index=idx, repeat=2)
    for n in cached:
        assert torch.equal(cached[n], fresh[n]), n


def test_teacher_cache_skips_the_teacher_forward():
    w, _, _ = run(DGSConfig(lora_dropout=0.0), index=torch.arange(6))
    calls = []
    w.encode_teacher = lambda images: calls.append(1)  # must not be called
    x, caps, y = batch(dtype=torch.float64)
    w(x, caps, y, index=torch.arange(6)).loss.backward()
    assert calls == []
    with pytest.raises(ValueError, match="index"):
        w(x, caps, y, index=torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------
# the cost floor, structurally: which towers and blocks a step runs, and that the shortcuts
# taken to get there change nothing
# ------------------------------------------------------------------------------------------
def count_calls(w):
    """Wrap the encoder's image/text forwards and every image-tower block with counters."""
    calls = {"image": 0, "text": 0, "text_rows": 0, "blocks": []}
    enc = w.encoder
    image, pooled, text = enc.encode_image, enc.encode_image_pooled, enc.encode_text

    def encode_image(pixels):
        calls["image"] += 1
        return image(pixels)

    def encode_image_pooled(pixels):  # the teacher's path
        calls["image"] += 1
        return pooled(pixels)

    def encode_text(tokens):
        calls["text"] += 1
        calls["text_rows"] += tokens.shape[0]
        return text(tokens)

    enc.encode_image, enc.encode_text = encode_image, encode_text
    enc.encode_image_pooled = encode_image_pooled
    blocks = enc.blocks()
    calls["blocks"] = [0] * len(blocks)
    for i, blk in enumerate(blocks):

        def hook(module, args, output, i=i):
            calls["blocks"][i] += 1

        blk.register_forward_hook(hook)
    return calls


def test_cold_step_runs_each_tower_once_and_text_on_unique_captions():
    w, _ = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64, layers=3)
    calls = count_calls(w)
    x, caps, y = batch(dtype=torch.float64)
    assert len(set(caps)) == len(caps) - 1  # one caption repeats in the batch
    w(x, caps, y, index=torch.arange(6)).loss.backward()
    assert calls["image"] == 2  # student + teacher (adapters off), nothing else
    assert calls["text"] == 1 and calls["text_rows"] == len(set(caps))
    # the teacher's last block runs for the class token only (no forward hook fires)
    assert calls["blocks"] == [2, 2, 1]


def test_warm_step_runs_the_student_only_and_equals_the_cold_step():
    """A later epoch (captions and indices seen): one image-tower forward, like plain LoRA."""
    idx = torch.arange(6)
    w, _ = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64, layers=3)
    x, caps, y = batch(dtype=torch.float64)
    w(x, caps, y, index=idx)  # epoch 1 fills the caches (no optimiser step: weights unchanged)
    calls = count_calls(w)
    for p in w.parameters():
        p.grad = None
    warm = w(x, caps, y, index=idx)
    warm.loss.backward()
    assert calls["image"] == 1 and calls["text"] == 0 and calls["blocks"] == [1, 1, 1]
    g_warm = grads(w)
    _, g_cold, cold = run(DGSConfig(lora_dropout=0.0, teacher_cache=False, text_cache_size=0))
    # equal up to float64 rounding: the cold text forward batches all six captions, the cache
    # was filled from the five distinct ones (another matmul shape)
    for n in g_cold:
        torch.testing.assert_close(g_warm[n], g_cold[n], rtol=1e-12, atol=1e-15, msg=n)
    torch.testing.assert_close(warm.loss, cold.loss, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "layers, lora_layers, dropout",
    [
        (3, [-1], 0.0),
        (3, [-2, -1], 0.0),
        (4, [-2, -1], 0.5),
    ],
)
def test_shared_trunk_runs_the_trunk_once_and_is_exact(layers, lora_layers, dropout):
    """The frozen blocks below the first adapted one run once for teacher and student; the
    result equals two separate forwards bit for bit, LoRA dropout included (the teacher draws
    no random numbers, so the student's dropout masks are the same)."""
    cfg = dict(lora_dropout=dropout, lora_layers=lora_layers)
    results = {}
    for shared in (True, False):
        w, _ = build(DGSConfig(shared_trunk=shared, **cfg), dtype=torch.float64, layers=layers)
        calls = count_calls(w)
        x, caps, y = batch(dtype=torch.float64)
        torch.manual_seed(123)
        out = w(x, caps, y)
        out.loss.backward()
        start = layers + min(lora_layers)
        assert w.teacher.trunk_start == start
        expected = [1] * start + [2] * (layers - start) if shared else [2] * layers
        expected[-1] = 1  # the teacher's last block: class token only, no forward hook
        assert calls["blocks"] == expected
        results[shared] = (grads(w), out.loss.detach())
    for n in results[True][0]:
        assert torch.equal(results[True][0][n], results[False][0][n]), n
    assert torch.equal(results[True][1], results[False][1])


def test_stage1_teacher_cache_equals_the_teacher_forward():
    """Stage 1 (``fit_teacher_head`` with indices) fills the teacher cache; a stage-2 step read
    from it equals the step that runs the teacher."""
    x, caps, y = batch(dtype=torch.float64)
    idx = torch.arange(6)
    out = {}
    for cached in (True, False):
        cfg = DGSConfig(lora_dropout=0.0, teacher_cache=cached)
        w, _ = build(cfg, dtype=torch.float64, layers=3)
        w.fit_teacher_head(
            [(x[:3], caps[:3], y[:3], idx[:3]), (x[3:], caps[3:], y[3:], idx[3:])],
            epochs=2,
            lr=1e-2,
        )
        assert len(w.teacher_cache) == (6 if cached else 0)
        calls = count_calls(w)
        step = w(x, caps, y, index=idx)
        step.loss.backward()
        assert calls["image"] == (1 if cached else 2)
        out[cached] = (grads(w), step.losses["teacher"], step.loss.detach())
    for n in out[True][0]:
        torch.testing.assert_close(out[True][0][n], out[False][0][n], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form", ["tensor", "list", "float", "bool", "column"])
def test_labels_checked_on_the_host_give_the_same_step(form):
    """Labels are validated on their host copy (no device synchronisation) and copied without
    blocking; every accepted form gives the same step, and bad values still raise."""
    x, caps, y = batch(dtype=torch.float64)
    given = {
        "tensor": y,
        "list": y.tolist(),
        "float": y.double(),
        "bool": y.bool(),
        "column": y.view(-1, 1),
    }[form]
    w, _ = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64, layers=3)
    out = w(x, caps, given)
    out.loss.backward()
    _, ref, ref_out = run(DGSConfig(lora_dropout=0.0))
    for n, g in grads(w).items():
        assert torch.equal(g, ref[n]), n
    assert torch.equal(out.loss, ref_out.loss)
    bad = {
        "tensor": torch.tensor([0, 1, 2, 0, 1, 0]),
        "list": [0, 1, -1, 0, 1, 0],
        "float": torch.tensor([0, 1, 0.5, 0, 1, 0], dtype=torch.float64),
        "bool": None,
        "column": torch.tensor([[0], [1], [3], [0], [1], [0]]),
    }[form]
    if bad is not None:
        with pytest.raises(ValueError, match="labels"):
            w(x, caps, bad)


@pytest.mark.parametrize("layers", [1, 3])
def test_class_token_last_block_equals_the_full_forward(layers):
    """The teacher evaluates its last block for the class token only; the pooled features are
    those of the full forward (float64 rounding)."""
    w, original = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64, layers=layers)
    assert w.encoder._class_token_pooling()
    x, _, _ = batch(dtype=torch.float64)
    torch.testing.assert_close(
        w.encode_teacher(x), original.encode_image(x).detach(), rtol=1e-12, atol=1e-14
    )
    with torch.no_grad():
        torch.testing.assert_close(
            w.encoder.encode_image_pooled(x), w.encoder.encode_image(x), rtol=1e-12, atol=1e-14
        )
