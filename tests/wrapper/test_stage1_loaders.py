"""Stage 1 takes the user's loader as it is: tuples and lists whose first two entries are
images and labels, dgsnet's own batches, dicts, a `batch_fn`; a one-shot iterator with
several epochs is refused before any training."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from tests.helpers import CAPTIONS, batch, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def wrapper() -> DGSWrapper:
    return DGSWrapper(tiny_open_clip(), None, DGSConfig(suppression=False))


def reference_history() -> tuple[list[float], dict[str, torch.Tensor]]:
    w = wrapper()
    x, _, y = batch()
    hist = w.fit_teacher_head([(x[:3], y[:3]), (x[3:], y[3:])], epochs=2, lr=1e-2)
    return hist, copy.deepcopy(w.teacher_head.state_dict())


FORMS = {
    "(img, label)": lambda x, y, i: (x, y),
    "[img, label]": lambda x, y, i: [x, y],
    "(img, label, caption)": lambda x, y, i: (x, y, [CAPTIONS[0]] * len(y)),
    "(img, label, path)": lambda x, y, i: (x, y, tuple(f"/d/{j}.png" for j in i.tolist())),
    "(img, float label)": lambda x, y, i: (x, y.float()),
    "(img, captions, label, index)": lambda x, y, i: (x, [CAPTIONS[0]] * len(y), y, i),
    "(img, no captions, label)": lambda x, y, i: (x, [None] * len(y), y),
    "dict": lambda x, y, i: {"image": x, "label": y, "landmark": None},
    "dict plural": lambda x, y, i: {"images": x, "labels": y, "index": i},
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_batch_form_trains_the_same_probe(form):
    expected_hist, expected = reference_history()
    w = wrapper()
    x, _, y = batch()
    idx = torch.arange(6)
    make = FORMS[form]
    loader = [make(x[:3], y[:3], idx[:3]), make(x[3:], y[3:], idx[3:])]
    hist = w.fit_teacher_head(loader, epochs=2, lr=1e-2)
    assert hist == pytest.approx(expected_hist, rel=1e-6, abs=1e-7)
    for k, v in w.teacher_head.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)


def test_named_keys_and_batch_fn():
    expected_hist, _ = reference_history()
    x, _, y = batch()
    w = wrapper()
    dict_loader = [{"pix": x[:3], "lbl": y[:3]}, {"pix": x[3:], "lbl": y[3:]}]
    hist = w.fit_teacher_head(dict_loader, epochs=2, lr=1e-2, image_key="pix", label_key="lbl")
    assert hist == pytest.approx(expected_hist, rel=1e-6)
    w = wrapper()
    odd = [("meta", (x[:3], y[:3])), ("meta", (x[3:], y[3:]))]
    hist = w.fit_teacher_head(odd, epochs=2, lr=1e-2, batch_fn=lambda b: b[1])
    assert hist == pytest.approx(expected_hist, rel=1e-6)


def test_a_one_shot_iterator_with_several_epochs_is_refused_before_training():
    w = wrapper()
    before = copy.deepcopy(w.teacher_head.state_dict())
    x, _, y = batch()

    def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield x, y

    with pytest.raises(ValueError, match="one-shot iterator.*re-iterable"):
        w.fit_teacher_head(gen(), epochs=2)
    for k, v in w.teacher_head.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(w.fit_teacher_head(gen(), epochs=1, lr=1e-2)) == 1  # one pass is fine


def test_bad_forms_are_named():
    w = wrapper()
    x, _, y = batch()
    with pytest.raises(ValueError, match=r"no images under a common name.*image_key"):
        w.fit_teacher_head([{"pixels_here": x, "label": y}], epochs=1)
    with pytest.raises(ValueError, match="has no labels key 'lbl'"):
        w.fit_teacher_head([{"image": x, "label": y}], epochs=1, label_key="lbl")
    with pytest.raises(ValueError, match="batch_fn must return"):
        w.fit_teacher_head([(x, y)], epochs=1, batch_fn=lambda b: b[0])
    with pytest.raises(ValueError, match="got Tensor"):
        w.fit_teacher_head([x], epochs=1)
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        w.fit_teacher_head([], epochs=1)
    with pytest.raises(TypeError, match="iterable of batches"):
        w.fit_teacher_head(5, epochs=1)  # type: ignore[arg-type]
