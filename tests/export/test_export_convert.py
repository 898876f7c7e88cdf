"""`dgsnet.export.convert`: open_clip CLIP <-> transformers CLIPModel weights, exactly."""

from __future__ import annotations

import pytest
import torch

from dgsnet.export import ExportError
from dgsnet.export.convert import (
    check_plain_open_clip,
    hf_config,
    hf_to_open_clip,
    open_clip_config_of_hf,
    open_clip_to_hf,
)
from dgsnet.export.open_clip import config_from_modules
from tests.helpers import tiny_hf_clip, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def _hf_of(model):
    from transformers import CLIPConfig, CLIPModel

    hf = CLIPModel(CLIPConfig(**hf_config(config_from_modules(model)))).eval()
    missing, unexpected = hf.load_state_dict(open_clip_to_hf(model.state_dict()), strict=False)
    assert not missing and not unexpected
    return hf


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_to_clipmodel_same_features_both_towers(quick_gelu):
    import open_clip

    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        quick_gelu=quick_gelu,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    hf = _hf_of(model)
    assert hf.config.vision_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # CLIP BPE layout: start token, words, end-of-text (the largest id), padding
    tokens = torch.zeros(3, 16, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    for i, n in enumerate((3, 7, 14)):
        tokens[i, 0] = 49406
        tokens[i, 1 : n + 1] = torch.randint(1, 49000, (n,), generator=g)
        tokens[i, n + 1] = 49407
    with torch.no_grad():
        img_oc, img_hf = model.encode_image(x), _features(hf.get_image_features(pixel_values=x))
        txt_oc, txt_hf = (
            model.encode_text(tokens),
            _features(hf.get_text_features(input_ids=tokens)),
        )
    assert torch.allclose(img_oc, img_hf, atol=1e-5)
    assert torch.allclose(txt_oc, txt_hf, atol=1e-5)


def test_clipmodel_round_trip_is_bitwise():
    pytest.importorskip("transformers")
    hf = tiny_hf_clip()
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    back = open_clip_to_hf(hf_to_open_clip(state))
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def test_clipmodel_to_open_clip_same_image_features():
    import open_clip

    pytest.importorskip("transformers")
    hf = tiny_hf_clip().eval()
    cfg = open_clip_config_of_hf(hf.config)
    model = open_clip.CLIP(**cfg).eval()
    model.load_state_dict(hf_to_open_clip(hf.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = _features(hf.get_image_features(pixel_values=x))
        assert torch.allclose(model.encode_image(x), want, atol=1e-5)


def test_models_without_an_equivalent_are_refused():
    layer_scale = tiny_open_clip(layers=1, layer_scale=0.1)
    with pytest.raises(ExportError, match="no CLIPModel equivalent: it uses LayerScale"):
        check_plain_open_clip(layer_scale)
    check_plain_open_clip(tiny_open_clip())
    with pytest.raises(ExportError, match="cannot convert open_clip weights"):
        open_clip_to_hf({**tiny_open_clip().state_dict(), "visual.extra": torch.zeros(1)})
