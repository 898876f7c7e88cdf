"""`dgsnet.export.merge`: the LoRA folded in with the run's own scaling, and open_clip's
split q/k/v fused back into `in_proj_weight` exactly."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.encoders import SplitAttention
from dgsnet.export import fuse_attention, merged_copy, merged_linear, pristine_copy
from dgsnet.export.merge import lora_layers
from tests.helpers import make_lora_nonzero, open_clip_tokenizer, tiny_hf_clip, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def _wrapper(scaling: str, rank: int = 4, alpha: float = 10.0, targets=None) -> tuple[Any, Any]:
    model = tiny_open_clip()
    original = copy.deepcopy(model)
    cfg = DGSConfig(
        lora_rank=rank,
        lora_alpha=alpha,
        lora_scaling=scaling,
        lora_dropout=0.0,
        lora_targets=targets,
    )
    w = DGSWrapper(model, open_clip_tokenizer(), cfg)
    make_lora_nonzero(w, scale=0.3)
    return w.eval(), original


@pytest.mark.parametrize("scaling, factor", [("standard", 10.0 / 4), ("rslora", 10.0 / 2)])
def test_merged_weight_is_w_plus_s_b_a(scaling, factor):
    """`s` is alpha / r (standard) or alpha / sqrt(r) (rsLoRA), as the run trained with."""
    w, _ = _wrapper(scaling)
    name, layer = next(lora_layers(w.encoder.image_tower))
    base = layer.get_base_layer()
    a = layer.lora_A["default"].weight.double()
    b = layer.lora_B["default"].weight.double()
    want = (base.weight.double() + factor * (b @ a)).float()
    got, bias = merged_linear(layer)
    assert torch.equal(got, want), name
    assert torch.equal(bias, base.bias)
    # the merged linear computes what the peft layer computes
    x = torch.randn(5, base.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(nn.functional.linear(x, got, bias), layer(x), atol=1e-5)


def test_standard_and_rslora_merge_differently():
    std, _ = _wrapper("standard")
    rs, _ = _wrapper("rslora")
    (_, ls), (_, lr) = next(lora_layers(std.model)), next(lora_layers(rs.model))
    assert not torch.allclose(merged_linear(ls)[0], merged_linear(lr)[0])


def test_split_then_fuse_gives_back_the_attention_bitwise():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    holder = nn.Module()
    holder.attn = SplitAttention(mha)
    assert fuse_attention(holder) == 1
    assert isinstance(holder.attn, nn.MultiheadAttention)
    for key, value in mha.state_dict().items():
        assert torch.equal(holder.attn.state_dict()[key], value), key
    assert holder.attn.batch_first and holder.attn.num_heads == 4


def test_merged_copy_is_a_stock_open_clip_model_with_the_merged_weights():
    w, original = _wrapper("rslora")
    merged = merged_copy(w.model)
    sd, stock = merged.state_dict(), original.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in stock.items()}
    assert not any(isinstance(m, SplitAttention) for m in merged.modules())
    assert not list(lora_layers(merged))
    tower = w.encoder.image_tower
    d = 32
    for i in range(2):
        key = f"visual.transformer.resblocks.{i}.attn.in_proj_weight"
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            layer = tower.get_submodule(f"transformer.resblocks.{i}.attn.{proj}")
            s = layer.scaling["default"]
            assert s == pytest.approx(10.0 / math.sqrt(4))
            delta = (
                s
                * layer.lora_B["default"].weight.double()
                @ layer.lora_A["default"].weight.double()
            )
            want = (stock[key][j * d : (j + 1) * d].double() + delta).float()
            assert torch.equal(sd[key][j * d : (j + 1) * d], want)
    untouched = [
        k for k in stock if "in_proj_weight" not in k and "c_fc" not in k and "c_proj" not in k
    ]
    for key in untouched:
        assert torch.equal(sd[key], stock[key]), key
    # the merged model computes the wrapper's features
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(merged.encode_image(x), w.encoder.encode_image(x), atol=1e-5)


def test_pristine_copy_is_the_model_before_fine_tuning():
    w, original = _wrapper("standard", targets=["q_proj", "v_proj", "c_fc"])
    pristine = pristine_copy(w.model)
    for key, value in original.state_dict().items():
        assert torch.equal(pristine.state_dict()[key], value), key


def test_hf_merged_copy_keeps_the_separate_projections():
    model = tiny_hf_clip()
    original = copy.deepcopy(model)
    w = DGSWrapper(model, None, DGSConfig(lora_dropout=0.0))
    make_lora_nonzero(w, scale=0.3)
    merged = merged_copy(w.model, fuse=False)
    assert type(merged) is type(original)
    assert set(merged.state_dict()) == set(original.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = merged.get_image_features(pixel_values=x)
        got = got if isinstance(got, torch.Tensor) else got.pooler_output
        assert torch.allclose(got, w.encoder.encode_image(x), atol=1e-5)
    assert torch.equal(
        pristine_copy(w.model, fuse=False).state_dict()["visual_projection.weight"],
        original.state_dict()["visual_projection.weight"],
    )


def test_the_wrapper_is_left_as_it_was():
    w, _ = _wrapper("rslora")
    before = {n: p.detach().clone() for n, p in w.named_parameters()}
    merged_copy(w.model)
    pristine_copy(w.model)
    assert len(list(lora_layers(w.model))) == len(w.lora_modules) == 10
    for n, p in w.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_merged_peft_layer_is_refused_for_the_base_model():
    w, _ = _wrapper("standard")
    _, layer = next(lora_layers(w.model))
    layer.merge()
    with pytest.raises(ValueError, match="the base model cannot be recovered"):
        pristine_copy(w.model)
    # merging it again would count the LoRA twice: the already-merged weight is taken as is
    weight, _ = merged_linear(layer)
    assert torch.equal(weight, layer.get_base_layer().weight)
