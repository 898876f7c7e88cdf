"""Encoders as the field holds them: a Hugging Face processor as the tokenizer, the OpenAI
CLIP class (vendored, as detection codebases keep it), and a text tower that is tried once
at construction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.errors import EncoderError
from tests.helpers import (
    CAPTIONS,
    batch,
    hf_tokenizer,
    open_clip_tokenizer,
    openai_clip_tokenize,
    tiny_hf_clip,
    tiny_open_clip,
    tiny_openai_clip,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_hf_processor_serves_as_the_tokenizer():
    transformers = pytest.importorskip("transformers")
    tok = hf_tokenizer()
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    model = tiny_hf_clip()
    x, caps, y = batch()
    with_processor = DGSWrapper(copy.deepcopy(model), processor, DGSConfig(lora_dropout=0.0))
    with_tokenizer = DGSWrapper(copy.deepcopy(model), tok, DGSConfig(lora_dropout=0.0))
    assert with_processor.encoder.tokenizer is tok
    a = with_processor.encode_text(caps)
    b = with_tokenizer.encode_text(caps)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with_processor(x, caps, y).loss.backward()


def test_the_openai_clip_class_trains_and_its_forward_equals_predict():
    model = tiny_openai_clip()
    original = copy.deepcopy(model)
    fc = nn.Linear(16, 1)
    dgs = DGSWrapper(
        model, openai_clip_tokenize(), DGSConfig.reference(lora_dropout=0.0), image_head=fc
    )
    assert dgs.encoder.kind == "open_clip" and dgs.feature_dim == 16
    assert len(dgs.lora_modules) == 6  # q, k, v of 2 blocks
    x, caps, y = batch()
    # the untrained student is the pre-trained encoder (LoRA B = 0, attention split exactly)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(x), original.encode_image(x), rtol=1e-5, atol=1e-5
        )
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        out = dgs(x, caps, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert torch.isfinite(out.loss)
    model.eval()
    with torch.no_grad():
        theirs = fc(model.encode_image(x))  # the codebase's own forward
    torch.testing.assert_close(theirs, dgs.predict(x), rtol=0, atol=1e-6)
    # the teacher is still the pre-trained encoder
    torch.testing.assert_close(
        dgs.encode_teacher(x), original.encode_image(x).detach(), rtol=1e-5, atol=1e-5
    )


def test_long_captions_are_truncated_for_the_openai_tokenizer():
    dgs = DGSWrapper(tiny_openai_clip(), openai_clip_tokenize(), DGSConfig())
    feats = dgs.encode_text([" ".join(["word"] * 200), CAPTIONS[0]])
    assert feats.shape == (2, 16)


class BrokenText(nn.Module):
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("text weights were never loaded")


def test_a_broken_text_tower_fails_at_construction_naming_encode_text():
    model = tiny_open_clip()
    model.transformer = BrokenText()
    with pytest.raises(EncoderError, match=r"CLIP\.encode_text raised \w+Error"):
        DGSWrapper(model, open_clip_tokenizer(), DGSConfig())
    # without suppression no text tower is needed
    DGSWrapper(model, open_clip_tokenizer(), DGSConfig(suppression=False))


def test_a_clip_without_its_text_tower_is_refused():
    model = tiny_open_clip()
    del model.transformer, model.token_embedding
    with pytest.raises(EncoderError, match=r"text tower failed.*suppression=False"):
        DGSWrapper(model, None, DGSConfig())


def test_a_hf_model_with_a_broken_text_tower_names_get_text_features():
    pytest.importorskip("transformers")
    model = tiny_hf_clip()
    model.text_model = BrokenText()
    with pytest.raises(EncoderError, match=r"CLIPModel\.get_text_features raised"):
        DGSWrapper(model, hf_tokenizer(), DGSConfig())


def test_text_features_outside_the_joint_space_are_refused():
    model = tiny_open_clip()
    model.text_projection = nn.Parameter(torch.randn(32, 8))  # text 8-wide, images 16-wide
    with pytest.raises(EncoderError, match=r"gave \(1, 8\).*expected \(1, 16\)"):
        DGSWrapper(model, open_clip_tokenizer(), DGSConfig())


def test_the_construction_check_leaves_the_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    DGSWrapper(tiny_open_clip(seed=1), open_clip_tokenizer(), DGSConfig())
    # tiny_open_clip reseeds; compare against the same construction with suppression off
    after_on = torch.rand(3)
    torch.manual_seed(5)
    DGSWrapper(tiny_open_clip(seed=1), open_clip_tokenizer(), DGSConfig(suppression=False))
    after_off = torch.rand(3)
    assert torch.equal(after_on, after_off)
    assert expected.shape == after_on.shape
