"""`DGSWrapper(image_head=...)`: the user's own head is trained, used and saved, never copied."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.errors import EncoderError
from dgsnet.io import CheckpointError
from tests.helpers import batch, open_clip_tokenizer, tiny_hf_clip, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


class Detector(nn.Module):
    """A detection codebase's model: a CLIP and its own `fc` on the image embedding."""

    def __init__(self, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = tiny_open_clip()
        self.fc = head if head is not None else nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model.encode_image(x))


def mlp_head() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 1))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_users_head_is_trained_and_their_forward_equals_predict(kind):
    det = Detector(None if kind == "linear" else mlp_head())
    before = copy.deepcopy(det.fc.state_dict())
    dgs = DGSWrapper(
        det.model, open_clip_tokenizer(), DGSConfig(lora_dropout=0.0), image_head=det.fc
    )
    assert dgs.image_head is det.fc  # the same module, not a copy
    head_params = {id(p) for p in det.fc.parameters()}
    assert head_params <= {id(p) for p in dgs.trainable_parameters()}
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=1e-2)
    x, caps, y = batch()
    for _ in range(3):
        out = dgs(x, caps, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = det.fc.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained in place
    det.eval()
    with torch.no_grad():
        mine = det(x)
    torch.testing.assert_close(mine, dgs.predict(x), rtol=0, atol=1e-6)
    # the step's logits come from the user's head too
    assert out.logits.shape == (6, 1)


def test_head_parameters_frozen_by_the_user_stay_frozen():
    head = mlp_head()
    head[0].requires_grad_(False)
    dgs = DGSWrapper(tiny_open_clip(), None, DGSConfig(suppression=False), image_head=head)
    names = [n for n, _ in dgs.named_trainable_parameters()]
    assert "image_head.2.weight" in names and "image_head.0.weight" not in names
    assert not head[0].weight.requires_grad and head[2].weight.requires_grad


def test_a_head_inside_the_model_is_unfrozen_again():
    model = tiny_open_clip()
    model.fc = nn.Linear(16, 1)  # the head lives inside the model the wrapper freezes
    dgs = DGSWrapper(model, None, DGSConfig(suppression=False), image_head=model.fc)
    assert model.fc.weight.requires_grad
    assert any(n == "image_head.weight" for n, _ in dgs.named_trainable_parameters())


def test_a_head_of_another_width_is_refused_with_the_reason():
    with pytest.raises(EncoderError, match=r"takes 32 inputs.*16-wide.*joint|pooler_output"):
        DGSWrapper(tiny_open_clip(), None, DGSConfig(), image_head=nn.Linear(32, 1))
    bad = nn.Sequential(nn.Linear(32, 1))
    with pytest.raises(EncoderError, match=r"failed on features of shape \(2, 16\)"):
        DGSWrapper(tiny_open_clip(), None, DGSConfig(), image_head=bad)


def test_a_head_on_the_hf_pooler_output_is_refused():
    pytest.importorskip("transformers")
    model = tiny_hf_clip()
    hidden = model.config.vision_config.hidden_size  # 32; the joint space is 16
    with pytest.raises(EncoderError, match="pooler_output"):
        DGSWrapper(model, None, DGSConfig(num_classes=2), image_head=nn.Linear(hidden, 2))


def test_a_head_with_another_number_of_logits_names_the_config_fix():
    with pytest.raises(EncoderError, match=r"2 logit\(s\).*num_classes=2"):
        DGSWrapper(tiny_open_clip(), None, DGSConfig(), image_head=nn.Linear(16, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        DGSWrapper(tiny_open_clip(), None, DGSConfig(), image_head=lambda f: f)  # type: ignore[arg-type]


def test_checkpoint_round_trip_with_the_users_head(tmp_path):
    dgs = DGSWrapper(tiny_open_clip(), None, DGSConfig(suppression=False), image_head=mlp_head())
    with torch.no_grad():
        for p in dgs.image_head.parameters():
            p.add_(0.3)
    dgs.save_pretrained(tmp_path / "ck")
    x, _, _ = batch()
    with pytest.raises(CheckpointError, match="your own image head.*Sequential"):
        DGSWrapper.from_pretrained(tmp_path / "ck", tiny_open_clip())
    back = DGSWrapper.from_pretrained(tmp_path / "ck", tiny_open_clip(), image_head=mlp_head())
    torch.testing.assert_close(back.predict(x), dgs.predict(x), rtol=0, atol=0)
    linear = DGSWrapper(tiny_open_clip(), None, DGSConfig(suppression=False))
    with pytest.raises(CheckpointError, match="image head of class torch.nn.modules.container"):
        linear.load_checkpoint(tmp_path / "ck")


def test_the_wrapper_registers_no_parameter_under_a_name_of_its_own():
    dgs = DGSWrapper(tiny_open_clip(), None, DGSConfig())
    names = [n for n, _ in dgs.named_parameters()]
    # the image tower's first weight keeps its real name (it once also sat under a private
    # attribute of the wrapper, which named_parameters listed first)
    assert "model.visual.class_embedding" in names
    allowed = ("model.", "image_head.", "text_head.", "teacher_head.")
    assert all(n.startswith(allowed) for n in names), [
        n for n in names if not n.startswith(allowed)
    ]


def test_casting_the_model_alone_names_the_head_left_behind():
    model, fc = tiny_open_clip(), nn.Linear(16, 1)
    dgs = DGSWrapper(model, None, DGSConfig(suppression=False), image_head=fc)
    x, _, y = batch()
    model.double()  # the user's CLIP only: the wrapper's own heads stay float32
    fc.double()
    with pytest.raises(ValueError, match=r"DGS text head is torch.float32 on cpu.*dgs.half\(\)"):
        dgs(x.double(), None, y)
    with pytest.raises(ValueError, match="DGS text head"):
        dgs.predict(x.double())
    dgs.double()  # the wrapper holds the model and every head: one call casts them all
    dgs(x.double(), None, y).loss.backward()
    dgs.eval()
    with torch.no_grad():
        torch.testing.assert_close(fc(model.encode_image(x.double())), dgs.predict(x.double()))
