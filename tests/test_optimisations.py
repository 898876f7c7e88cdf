"""Every shortcut the wrapper takes is exact: equality against the unoptimised path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgsnet import DGSConfig
from dgsnet.heads import autograd_input_grad, linear_input_grad
from tests.test_wrapper import batch, build, grads


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
    assert w._trunk_start == 2
    _, b, _ = run(DGSConfig(shared_trunk=False, **cfg))
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_teacher_cache_equals_teacher_forward():
    idx = torch.arange(6)
    w, cached, _ = run(DGSConfig(lora_dropout=0.0), index=idx, repeat=2)
    assert len(w._teacher_cache) == 6
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
