"""A checkpoint loads only into a wrapper whose config computes the same function with it;
`from_pretrained` adopts the saved config. The config itself is immutable."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.io import CheckpointError
from dgsnet.wrapper.checkpoint import config_digest
from tests.helpers import batch, build, tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("field", "value"),
    [("lora_scaling", "rslora"), ("lora_alpha", 3.0), ("normalize_features", True)],
)
def test_load_checkpoint_refuses_a_config_that_computes_something_else(tmp_path, field, value):
    w, _ = build(DGSConfig(lora_dropout=0.0))
    w.save_pretrained(tmp_path)
    other = DGSWrapper(tiny_open_clip(), None, DGSConfig(lora_dropout=0.0, **{field: value}))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=rf"{field}: saved .*, this wrapper .*from_pretrained"
    ):
        other.load_checkpoint(tmp_path)
    for k, v in other.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k
    back = DGSWrapper.from_pretrained(tmp_path, tiny_open_clip())  # adopts the saved config
    assert back.config == w.config
    x, _, _ = batch()
    torch.testing.assert_close(back.predict(x), w.predict(x), rtol=0, atol=0)


def test_settings_that_do_not_change_the_scores_load_freely(tmp_path):
    w, _ = build(DGSConfig(lora_dropout=0.0))
    w.save_pretrained(tmp_path)
    cfg = DGSConfig(lora_dropout=0.3, align_weight=0.5, teacher_cache=False, suppression=False)
    other = DGSWrapper(tiny_open_clip(), None, cfg)
    other.load_checkpoint(tmp_path)
    x, _, _ = batch()
    torch.testing.assert_close(other.predict(x), w.predict(x), rtol=0, atol=0)


def test_the_config_is_immutable_and_replace_validates():
    cfg = DGSConfig(lora_targets=["q_proj", "v_proj"], lora_layers=[-1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.align_weight = -1.0  # type: ignore[misc]
    assert cfg.lora_targets == ("q_proj", "v_proj") and cfg.lora_layers == (-1,)
    assert cfg.to_dict()["lora_targets"] == ["q_proj", "v_proj"]  # JSON keeps lists
    assert hash(cfg) == hash(DGSConfig(lora_targets=("q_proj", "v_proj"), lora_layers=(-1,)))
    changed = dataclasses.replace(cfg, align_weight=0.5)
    assert changed.align_weight == 0.5 and cfg.align_weight == 0.2
    with pytest.raises(ValueError, match="align_weight"):
        dataclasses.replace(cfg, align_weight=-1.0)


def test_the_digest_of_a_config_did_not_move_with_the_tuples():
    """Checkpoints record config_sha256 over the config's JSON. These digests were computed
    by dgsnet before the config became frozen (lists, not tuples): they must still match, or
    every earlier checkpoint would be refused as edited."""
    assert config_digest(DGSConfig.reference()) == (
        "d0fafb462eb2764077666cc618b762c6d0d859df12af98619f53a3332ae53f4e"
    )
    assert config_digest(DGSConfig(lora_layers=[-2, -1], lora_targets=["q_proj"])) == (
        "bd787d9ead783dd7382a47c87ea8e9edaab48fdf29615ef883749dcef61e9f4c"
    )
