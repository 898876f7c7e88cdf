"""Bad input to `DGSConfig`: every field either takes a value that survives the JSON round trip
or names itself in a `ValueError`; unknown keys, bad dicts and bad JSON are refused clearly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dgsnet import DGSConfig
from tests.helpers.bad_input import FIELDS, JUNK, PROFILE, raises_clearly

pytestmark = pytest.mark.usefixtures("one_thread")


@PROFILE
@given(field=st.sampled_from(FIELDS), value=JUNK)
def test_config_accepts_or_names_the_field(field, value):
    """Every value either gives a valid config that survives the JSON round trip, or a
    ValueError naming the field."""
    try:
        cfg = DGSConfig(**{field: value})
    except ValueError as exc:
        assert f"DGSConfig.{field}" in str(exc) or "DGSConfig.loss" in str(exc), str(exc)
        return
    assert DGSConfig.from_json(cfg.to_json()) == cfg


@PROFILE
@given(value=JUNK, key=st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELDS))
def test_config_unknown_keys(value, key):
    raises_clearly(lambda: DGSConfig(**{key: value}), TypeError, match=key, where=None)
    with pytest.warns(UserWarning, match="unknown key"):
        assert DGSConfig.from_dict({key: value, "lora_rank": 3}) == DGSConfig(lora_rank=3)


@pytest.mark.parametrize(
    "data", [None, [1], "lora_rank=3", 3, {"lora_rank": "3"}, {"eps": math.nan}]
)
def test_config_from_dict_refuses_bad_data(data):
    raises_clearly(lambda: DGSConfig.from_dict(data))


@pytest.mark.parametrize("text", ["{not json", '{"lora_rank": -1}', '{"order": "sideways"}'])
def test_config_from_json_refuses_bad_text(text):
    raises_clearly(lambda: DGSConfig.from_json(text))
