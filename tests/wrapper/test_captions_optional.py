"""Captions where the step needs them, and only there; caption sources looked up by path or
index, so that a loader yielding `(img, label)` or `(img, label, path)` needs no change."""

from __future__ import annotations

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.data import CaptionStore
from dgsnet.wrapper.captions import CaptionSource
from tests.helpers import CAPTIONS, batch, build, grads, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")

PATHS = [f"/data/train/progan/car/{'01'[i % 2]}_real/{i}.png" for i in range(6)]


def count_text_calls(w: DGSWrapper) -> list[int]:
    calls = [0]
    inner = w.encoder.encode_text

    def counted(tokens):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return inner(tokens)

    w.encoder.encode_text = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("alignment", [True, False])
def test_suppression_off_needs_no_captions_and_runs_no_text_forward(alignment):
    w = DGSWrapper(tiny_open_clip(), None, DGSConfig(suppression=False, alignment=alignment))
    calls = count_text_calls(w)
    x, caps, y = batch()
    out = w(x, None, y)
    out.loss.backward()
    assert calls[0] == 0 and "text" not in out.losses
    assert w(x, caps, y).losses.keys() == out.losses.keys()  # given captions are not used
    assert calls[0] == 0


def test_missing_captions_name_every_option_and_train_nothing():
    w, _ = build(DGSConfig(lora_dropout=0.0))
    x, _, y = batch()
    with pytest.raises(ValueError) as err:
        w(x, None, y)
    message = str(err.value)
    for option in ("dgsnet caption", "paths=", "index=", "captions='a photo'", "suppression=False"):
        assert option in message, option
    assert all(p.grad is None for p in w.trainable_parameters())
    with pytest.raises(TypeError, match="dgsnet caption"):
        w.encode_text(None)


def step_grads(w: DGSWrapper, **kwargs) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    x, _, y = batch()
    for p in w.parameters():
        p.grad = None
    w(x, labels=y, **kwargs).loss.backward()
    return grads(w)


def test_caption_sources_give_the_step_of_explicit_captions():
    w, _ = build(DGSConfig(lora_dropout=0.0))
    x, caps, y = batch()
    w(x, caps, y).loss.backward()
    expected = grads(w)
    by_path = dict(zip(PATHS, CAPTIONS, strict=True))
    sources = [
        ({p: c for p, c in by_path.items()}, {"paths": PATHS}),
        (
            CaptionStore({p.replace("/data", "/elsewhere"): c for p, c in by_path.items()}),
            {"paths": PATHS},
        ),
        (list(CAPTIONS), {"index": torch.arange(6)}),
        ({i: c for i, c in enumerate(CAPTIONS)}, {"index": torch.arange(6)}),
        (lambda keys: [by_path[k] for k in keys], {"paths": PATHS}),
    ]
    for source, kwargs in sources:
        w.captions = source
        got = step_grads(w, **kwargs)
        for n in expected:
            torch.testing.assert_close(got[n], expected[n], rtol=0, atol=0, msg=repr(source))


def test_a_template_caption_is_used_for_every_image():
    w, _ = build(DGSConfig(lora_dropout=0.0))
    x, _, y = batch()
    w(x, ["a photo"] * 6, y).loss.backward()
    expected = grads(w)
    w.captions = "a photo"
    got = step_grads(w)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=0)


def test_caption_source_errors_are_named():
    w, _ = build(DGSConfig(lora_dropout=0.0))
    x, _, y = batch()
    w.captions = {PATHS[0]: "a cat"}
    with pytest.raises(ValueError, match="no caption for '/data/train/progan/car/1_real/1.png'"):
        w(x, None, y, paths=PATHS)
    with pytest.raises(ValueError, match="needs the batch's paths= or index="):
        w(x, None, y)
    with pytest.raises(ValueError, match="must list 6 image paths"):
        w(x, None, y, paths=PATHS[:2])
    w.captions = ["a"] * 3
    with pytest.raises(ValueError, match="no caption for index 3"):
        w(x, None, y, index=torch.arange(6))
    with pytest.raises(TypeError, match="a caption string"):
        CaptionSource(42)
    with pytest.raises(TypeError, match="a caption string"):
        DGSWrapper(tiny_open_clip(), None, DGSConfig(), captions=3.5)
