"""`DGSWrapper.apply_surgery`: the surgery on features the user's own model computed.

Through this route, with the user's head set as the wrapper's image head and the same loss,
the LoRA gradients equal those of the wrapper's own step to 1e-10 in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dgsnet import DGSConfig, DGSWrapper, SurgeryResult
from tests.helpers import batch, build, open_clip_tokenizer, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "reference": DGSConfig(lora_dropout=0.0),
    "released": DGSConfig.reference(lora_dropout=0.0),
    "paper_order": DGSConfig(lora_dropout=0.0, order="project_then_align"),
    "invariant": DGSConfig(lora_dropout=0.0, align_scale="invariant"),
    "distill": DGSConfig(lora_dropout=0.0, feature_distill=0.7),
    "no_alignment": DGSConfig(lora_dropout=0.0, alignment=False),
    "no_suppression": DGSConfig(lora_dropout=0.0, suppression=False),
    "plain": DGSConfig(lora_dropout=0.0, suppression=False, alignment=False),
    "dropout": DGSConfig(lora_dropout=0.5),
    "ce": DGSConfig(lora_dropout=0.0, num_classes=3),
}


def lora_grads(w: DGSWrapper) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in w.named_trainable_parameters() if "lora" in n}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_apply_surgery_equals_the_step_in_float64(name):
    cfg = CONFIGS[name]
    x, caps, y = batch(dtype=torch.float64)
    if cfg.num_classes == 3:
        y = torch.tensor([0, 2, 1, 1, 0, 2])
    w, _ = build(cfg, dtype=torch.float64)
    w2 = copy.deepcopy(w)
    torch.manual_seed(11)
    out = w(x, caps, y)
    out.loss.backward()
    torch.manual_seed(11)
    f = w2.encode_student(x)  # the user's own forward of the encoder
    res = w2.apply_surgery(f, y, caps, images=x)
    assert isinstance(res, SurgeryResult)
    torch.testing.assert_close(res.features, f, rtol=0, atol=0)  # the same values
    loss = w2.head_loss(w2.image_head(res.features), y) + res.loss
    loss.backward()
    a, b = lora_grads(w), lora_grads(w2)
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-10, atol=1e-12, msg=n)
    torch.testing.assert_close(loss.detach(), out.loss.detach(), rtol=1e-12, atol=1e-12)
    assert set(res.losses) == set(out.losses) - {"image"}
    if w.rule is not None:
        assert res.stats.keys() == out.stats.keys() and res.stats


def test_the_teacher_cache_replaces_the_images():
    x, caps, y = batch(dtype=torch.float64)
    idx = torch.arange(6)
    w, _ = build(DGSConfig(lora_dropout=0.0), dtype=torch.float64)
    w2 = copy.deepcopy(w)
    w.fit_teacher_head([(x, caps, y, idx)], epochs=1, lr=1e-3)
    w2.teacher_head.load_state_dict(w.teacher_head.state_dict())
    w2.teacher_cache.store(idx, w.teacher_cache.lookup(idx))
    out = w(x, caps, y, index=idx)
    out.loss.backward()
    res = w2.apply_surgery(w2.encode_student(x), y, caps, index=idx)  # no images
    (w2.head_loss(w2.image_head(res.features), y) + res.loss).backward()
    a, b = lora_grads(w), lora_grads(w2)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-10, atol=1e-12)


def test_a_detector_with_a_clip_branch_beside_other_features():
    """AIDE-style: the CLIP features are one branch, concatenated with other features and
    classified by the detector's own head; the surgery still reaches the LoRA weights."""
    clip = tiny_open_clip()
    dgs = DGSWrapper(clip, open_clip_tokenizer(), DGSConfig(lora_dropout=0.0))
    other = nn.Conv2d(3, 4, 8, stride=8)
    head = nn.Linear(16 + 4, 1)
    x, caps, y = batch()
    f = dgs.encode_student(x)
    res = dgs.apply_surgery(f, y, caps, images=x)
    extra = other(x).mean(dim=(2, 3))
    logits = head(torch.cat([res.features, extra], dim=1))
    loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float()) + res.loss
    loss.backward()
    assert all(p.grad is not None for n, p in dgs.named_trainable_parameters() if "lora_A" in n)
    assert head.weight.grad is not None and other.weight.grad is not None
    assert dgs.text_head.weight.grad is not None  # the text head trains through res.loss
    assert res.stats["removed_fraction"] >= 0


def test_bad_input_is_named():
    w, _ = build(DGSConfig(lora_dropout=0.0))
    x, caps, y = batch()
    f = w.encode_student(x)
    with pytest.raises(ValueError, match="carry no gradient"):
        w.apply_surgery(f.detach(), y, caps, images=x)
    with pytest.raises(ValueError, match=r"shape \(B, 16\)"):
        w.apply_surgery(f[:, :8], y, caps, images=x)
    with pytest.raises(TypeError, match="floating tensor"):
        w.apply_surgery([1, 2], y, caps, images=x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass images="):
        w.apply_surgery(f, y, caps)
    with pytest.raises(ValueError, match="3 rows for 6 feature rows"):
        w.apply_surgery(f, y, caps, images=x[:3])
    with pytest.raises(TypeError, match="labels are required"):
        w.apply_surgery(f, None, caps, images=x)
    with pytest.raises(ValueError, match="no captions arrived"):
        w.apply_surgery(f, y, images=x)
    # nothing was trained by the refused calls
    assert all(p.grad is None for p in w.trainable_parameters())
