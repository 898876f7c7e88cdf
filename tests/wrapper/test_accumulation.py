"""Gradient accumulation: micro-batches accumulate to the gradient of the whole batch.

Every loss of the wrapper is mean-reduced over its batch. With ``align_scale="invariant"`` the
per-sample feature gradient is ``(task_b + lambda * help_b) / B`` followed by a projection
that does not depend on ``B``, so ``k`` equal micro-batches with ``loss / k`` each (or unequal
ones with ``loss * B_i / B``) sum to the whole batch's gradient (float64, relative error
<= 1e-12). With the reference ``lambda/B`` scaling each micro-batch weights the alignment by
``lambda / B_micro``: the sum equals the whole batch with ``align_weight = lambda * k``
(``eps=0``), as for data parallelism (docs/scaling.md).
"""

from __future__ import annotations

import pytest
import torch

from dgsnet import DGSConfig
from tests.helpers import batch, build, grads, max_rel_error, zero_grads

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _accumulate(w, x, caps, y, sizes, weights):
    zero_grads(w)
    start = 0
    for size, weight in zip(sizes, weights, strict=True):
        sl = slice(start, start + size)
        (w(x[sl], caps[sl], y[sl]).loss * weight).backward()
        start += size
    return grads(w)


def _full(w, x, caps, y):
    zero_grads(w)
    w(x, caps, y).loss.backward()
    return grads(w)


@pytest.mark.parametrize("order", ["align_then_project", "project_then_align"])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_equal_micro_batches_with_loss_over_k(order, k):
    w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant", order=order), dtype=F64)
    x, caps, y = batch(dtype=F64)
    full = _full(w, x, caps, y)
    acc = _accumulate(w, x, caps, y, [6 // k] * k, [1.0 / k] * k)
    assert max_rel_error(acc, full) <= 1e-12


def test_unequal_micro_batches_weighted_by_size():
    w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant"), dtype=F64)
    x, caps, y = batch(dtype=F64)
    full = _full(w, x, caps, y)
    sizes = [1, 2, 3]
    acc = _accumulate(w, x, caps, y, sizes, [s / 6 for s in sizes])
    assert max_rel_error(acc, full) <= 1e-12
    # the naive loss / k does not give the whole batch's gradient for unequal sizes
    naive = _accumulate(w, x, caps, y, sizes, [1 / 3] * 3)
    assert max_rel_error(naive, full) > 1e-3


def test_reference_scaling_accumulates_to_lambda_times_k():
    x, caps, y = batch(dtype=F64)
    k = 3
    w, _ = build(DGSConfig(lora_dropout=0.0, eps=0.0), dtype=F64)
    acc = _accumulate(w, x, caps, y, [2] * k, [1.0 / k] * k)
    w_k, _ = build(DGSConfig(lora_dropout=0.0, eps=0.0, align_weight=0.2 * k), dtype=F64)
    assert max_rel_error(acc, _full(w_k, x, caps, y)) <= 1e-12
    w_1, _ = build(DGSConfig(lora_dropout=0.0, eps=0.0), dtype=F64)
    lora = [n for n in acc if "lora" in n]
    full_1 = _full(w_1, x, caps, y)
    assert max_rel_error({n: acc[n] for n in lora}, {n: full_1[n] for n in lora}) > 1e-6


def test_accumulated_adam_training_equals_full_batch_training():
    """Three optimizer steps, each on 6 images as 3 micro-batches of 2."""
    params = []
    for micro in (False, True):
        w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant"), dtype=F64)
        opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
        for step in range(3):
            x, caps, y = batch(seed=step, dtype=F64)
            opt.zero_grad(set_to_none=True)
            if micro:
                for i in range(0, 6, 2):
                    (w(x[i : i + 2], caps[i : i + 2], y[i : i + 2]).loss / 3).backward()
            else:
                w(x, caps, y).loss.backward()
            opt.step()
        params.append({n: p.detach().clone() for n, p in w.named_trainable_parameters()})
    assert max_rel_error(params[1], params[0]) <= 1e-9
