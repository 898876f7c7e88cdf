"""What `DGSWrapper.from_pretrained` checks about the base model it is given (its shape), and
what it cannot (that its weights are the ones the checkpoint was trained on): the limit that
docs/wrapper.md states."""

from __future__ import annotations

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.io import CheckpointError
from tests.helpers import make_lora_nonzero, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_base_model_of_another_shape_is_refused(tmp_path):
    w = DGSWrapper(tiny_open_clip(), None, DGSConfig(lora_dropout=0.0))
    w.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="num_blocks"):
        DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(layers=3))
    with pytest.raises(CheckpointError, match="image_size"):
        DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(image_size=48))


def test_other_base_weights_of_the_same_shape_load_and_score_differently(tmp_path):
    w = DGSWrapper(tiny_open_clip(seed=0), None, DGSConfig(lora_dropout=0.0))
    make_lora_nonzero(w)
    w.save_pretrained(tmp_path)
    same = DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(seed=0))
    other = DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(seed=1))  # no error: the limit
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same.predict(x), w.eval().predict(x), rtol=0, atol=0)
    assert float((other.predict(x) - same.predict(x)).abs().max()) > 1e-3
