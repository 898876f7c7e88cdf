"""A wrapper checkpoint whose JSON config was edited by hand is refused, naming the change;
a checkpoint from before the config checksum loads as written."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("key", "value"), [("lora_alpha", 1.0), ("normalize_features", True)])
def test_an_edited_checkpoint_config_is_refused(tmp_path, key, value):
    from dgsnet import DGSWrapper
    from dgsnet.io import CheckpointError
    from tests.helpers.models import build, open_clip_tokenizer, tiny_open_clip

    w, _ = build()
    w.save_pretrained(tmp_path)
    path = tmp_path / "dgs_config.json"
    meta = json.loads(path.read_text())
    assert meta["config"][key] != value
    meta["config"][key] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config was changed after"):
        DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(), open_clip_tokenizer())
    with pytest.raises(CheckpointError, match="config was changed after"):
        w.load_checkpoint(tmp_path)
    del meta["config_sha256"]  # a checkpoint from before the checksum: loads as written
    path.write_text(json.dumps(meta))
    again = DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(), open_clip_tokenizer())
    assert getattr(again.config, key) == value
