"""Bad input to the wrapper: `DGSWrapper.forward`/`predict`/`encode_text` and its constructor
refuse wrong images, labels, captions, tokens and indices clearly; NaN/Inf images raise naming
the batch positions; `from_pretrained` on damaged folders raises `CheckpointError` or loads
only harmless damage. What "clearly" means, and the corruptions: `tests/helpers/bad_input.py`."""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.errors import CheckpointError
from tests.helpers import make_lora_nonzero, open_clip_tokenizer, tiny_open_clip
from tests.helpers.bad_input import (
    CORRUPTIONS,
    FIELDS,
    JUNK,
    PKG,
    PROFILE,
    B,
    D,
    corrupt,
    raises_clearly,
)

pytestmark = pytest.mark.usefixtures("one_thread")


CAPTIONS = ["a photo of a cat", "a red car", "two dogs", "a bowl of fruit"]


@functools.cache
def _wrapper(nonfinite: str = "raise", plain: bool = False) -> DGSWrapper:
    cfg = DGSConfig(
        lora_dropout=0.0, nonfinite=nonfinite, suppression=not plain, alignment=not plain
    )
    w = DGSWrapper(tiny_open_clip(), open_clip_tokenizer(), cfg)
    make_lora_nonzero(w)
    return w


def _good(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 32, 32, generator=g), list(CAPTIONS), torch.tensor([0, 1, 1, 0])


def _bad_labels():
    return st.one_of(
        # out-of-range class indices (int64 range), padded with valid ones
        st.lists(
            st.integers(-(2**62), 2**62).filter(lambda v: v not in (0, 1)), min_size=1, max_size=B
        ).map(lambda bad: torch.tensor([0] * (B - len(bad)) + bad)),
        st.lists(
            st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v not in (0.0, 1.0)),
            min_size=B,
            max_size=B,
        ).map(torch.tensor),
        st.integers(0, 8).filter(lambda n: n != B).map(lambda n: torch.zeros(n, dtype=torch.long)),
        st.sampled_from(
            [
                "0101",
                ["a"] * B,
                None,
                {"y": 1},
                torch.zeros(B, 2),
                torch.zeros(B).to("meta"),
                torch.zeros(B, dtype=torch.complex64),
                object(),
            ]
        ),
    )


def _bad_text(include_nonfinite_features: bool = True):
    kinds = [
        "tok_1d",
        "tok_3d",
        "tok_bool",
        "tok_complex",
        "tok_short",
        "tok_long",
        "tok_neg",
        "tok_vocab",
        "tok_meta",
        "feat_dim",
        "feat_3d",
        "feat_meta",
        "feat_rows",
    ]
    if include_nonfinite_features:  # checked by forward, not by the plain encoder
        kinds += ["feat_nan", "feat_inf"]
    return st.one_of(
        st.sampled_from(
            [
                "a cat",
                None,
                5,
                [1, 2, 3, 4],
                [None] * B,
                [],
                CAPTIONS[:3],
                CAPTIONS * 2,
                {"input_ids": "x"},
                set(CAPTIONS),
                b"abcd",
            ]
        ),
        st.sampled_from(kinds).map(_text_tensor),
    )


def _text_tensor(kind: str):
    ones = torch.ones(B, 16, dtype=torch.long)
    return {
        "tok_1d": ones[0],
        "tok_3d": ones[..., None],
        "tok_bool": ones.bool(),
        "tok_complex": ones.to(torch.complex64),
        "tok_short": ones[:, :8],
        "tok_long": torch.ones(B, 40, dtype=torch.long),
        "tok_neg": -ones,
        "tok_vocab": ones * 10**6,
        "tok_meta": ones.to("meta"),
        "feat_dim": torch.randn(B, 7),
        "feat_3d": torch.randn(B, D, 1),
        "feat_meta": torch.randn(B, D, device="meta"),
        "feat_rows": torch.randn(B + 1, D),
        "feat_nan": torch.full((B, D), math.nan),
        "feat_inf": torch.randn(B, D).index_fill(0, torch.tensor([1]), math.inf),
    }[kind]


def _bad_index():
    return st.one_of(
        st.lists(st.integers(), min_size=B, max_size=B)
        .filter(lambda v: min(v) < 0 or max(v) >= 2**31)
        .map(lambda v: torch.tensor([max(min(i, 2**62), -(2**62)) for i in v])),
        st.sampled_from(
            [
                "abcd",
                list("abcd"),
                torch.arange(B).float(),
                torch.arange(B + 1),
                torch.ones(B, dtype=torch.bool),
                torch.arange(B).to(torch.complex64),
                torch.arange(B).to("meta"),
                torch.arange(B).view(2, 2),
                object(),
            ]
        ),
    )


def _bad_images(draw_kind: str, seed: int):
    x, _, _ = _good(seed)
    if draw_kind in CORRUPTIONS:
        return corrupt(x, draw_kind)
    return {
        "size": torch.randn(B, 3, 16, 16),
        "channels": torch.randn(B, 1, 32, 32),
        "channels_last": x.permute(0, 2, 3, 1),
        "empty": x[:0],
        "float64": x.double(),
        "float16": x.half(),
    }[draw_kind]


IMAGE_KINDS = CORRUPTIONS + ("size", "channels", "channels_last", "empty", "float64", "float16")


@PROFILE
@given(data=st.data(), target=st.sampled_from(["images", "labels", "text", "index"]))
def test_forward_refuses_bad_input(data, target):
    w = _wrapper()
    x, caps, y = _good()
    index = None
    if target == "images":
        x = _bad_images(data.draw(st.sampled_from(IMAGE_KINDS)), 0)
    elif target == "labels":
        y = data.draw(_bad_labels())
    elif target == "text":
        caps = data.draw(_bad_text())
    else:
        index = data.draw(_bad_index())
    raises_clearly(lambda: w(x, caps, y, index=index))


@PROFILE
@given(
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    positions=st.lists(
        st.tuples(st.integers(0, B - 1), st.integers(0, 2), st.integers(0, 31), st.integers(0, 31)),
        min_size=1,
        max_size=5,
    ),
    mode=st.sampled_from(["surgery", "plain"]),
)
def test_nonfinite_images_raise_naming_the_samples(value, positions, mode):
    w = _wrapper(plain=mode == "plain")
    x, caps, y = _good()
    for p in positions:
        x[p] = value
    exc = raises_clearly(lambda: w(x, caps, y), ValueError, match="NaN or Inf")
    bad = sorted({p[0] for p in positions})
    assert f"batch positions {bad}" in str(exc)


def test_nonfinite_images_with_nonfinite_ignore_reach_the_loss():
    """The documented alternative: the non-finite loss goes to the caller (the trainer)."""
    w = _wrapper(nonfinite="ignore")
    x, caps, y = _good()
    x[2] = math.nan
    out = w(x, caps, y)
    assert not torch.isfinite(out.loss)


@pytest.mark.parametrize("nonfinite", ["raise", "ignore"])
def test_nonfinite_teacher_head(nonfinite):
    """A broken (NaN) teacher head: a clear error, or (``"ignore"``) no alignment at all, which
    is exactly the gradient of ``alignment=False``."""
    grads = {}
    for alignment in (True, False):
        w = DGSWrapper(
            tiny_open_clip(),
            open_clip_tokenizer(),
            DGSConfig(lora_dropout=0.0, nonfinite=nonfinite, alignment=alignment),
        )
        make_lora_nonzero(w)
        with torch.no_grad():
            w.teacher_head.weight.fill_(math.nan)
        if alignment and nonfinite == "raise":
            raises_clearly(lambda w=w: w(*_good()), ValueError, match="NaN or Inf")
            return
        w(*_good()).loss.backward()
        grads[alignment] = {n: p.grad for n, p in w.named_trainable_parameters()}
    for name, g in grads[True].items():
        torch.testing.assert_close(g, grads[False][name], rtol=1e-6, atol=1e-9)


@PROFILE
@given(kind=st.sampled_from(IMAGE_KINDS))
def test_predict_refuses_bad_images(kind):
    raises_clearly(lambda: _wrapper().predict(_bad_images(kind, 1)))


@PROFILE
@given(text=_bad_text(include_nonfinite_features=False))
def test_encode_text_refuses_bad_text(text):
    w = _wrapper()
    raises_clearly(lambda: w.encode_text(text, batch_size=B))


def test_wrapper_still_works_after_bad_input():
    w = _wrapper()
    for bad in (lambda: w("x", CAPTIONS, [0, 1, 1, 0]), lambda: w(*_good()[:2], [5, 5, 5, 5])):
        raises_clearly(bad)
    out = w(*_good())
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "call",
    [
        lambda: DGSWrapper("ViT-L-14"),
        lambda: DGSWrapper(None),
        lambda: DGSWrapper(tiny_open_clip(), None, {"lora_rank": 2}),
        lambda: DGSWrapper(tiny_open_clip(), None, DGSConfig(), loss_fn="bce"),
        lambda: DGSWrapper(tiny_open_clip(), None, DGSConfig(lora_layers=[9])),
        lambda: DGSWrapper(tiny_open_clip(), None, DGSConfig(lora_targets=["nope"])),
    ],
)
def test_constructor_refuses_bad_arguments(call):
    raises_clearly(call)


# -- from_pretrained on damaged folders ---------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    w = _wrapper()
    folder = tmp_path_factory.mktemp("ckpt") / "good"
    w.save_pretrained(folder)
    return folder, w.predict(_good()[0])


_BASE_MODEL = functools.lru_cache(maxsize=None)(lambda: tiny_open_clip())

DAMAGE = st.one_of(
    st.tuples(st.just("weights_truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("weights_flip"), st.floats(0, 0.999), st.integers(1, 255)),
    st.tuples(st.just("config_truncate"), st.floats(0, 0.99)),
    st.tuples(
        st.just("config_field"),
        st.sampled_from(
            ["format", "format_version", "model", "config", "weights_sha256", "tensors"]
        ),
        JUNK,
    ),
    st.tuples(st.just("config_value"), st.sampled_from(FIELDS), JUNK),
    st.tuples(st.just("delete"), st.sampled_from(["dgs_config.json", "dgs_weights.safetensors"])),
    st.tuples(
        st.just("garbage"),
        st.sampled_from(["dgs_config.json", "dgs_weights.safetensors"]),
        st.binary(max_size=64),
    ),
)


def _damage(folder: Path, damage) -> None:
    kind = damage[0]
    cfg, weights = folder / "dgs_config.json", folder / "dgs_weights.safetensors"
    if kind == "weights_truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: int(damage[1] * len(data))])
    elif kind == "weights_flip":
        data = bytearray(weights.read_bytes())
        data[int(damage[1] * len(data))] ^= damage[2]
        weights.write_bytes(bytes(data))
    elif kind == "config_truncate":
        data = cfg.read_bytes().rstrip()
        cfg.write_bytes(data[: int(damage[1] * (len(data) - 1))])
    elif kind in ("config_field", "config_value"):
        meta = json.loads(cfg.read_text())
        target = meta if kind == "config_field" else meta["config"]
        value = damage[2]
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN
        target[damage[1]] = value
        cfg.write_text(json.dumps(meta))
    elif kind == "delete":
        (folder / damage[1]).unlink()
    elif kind == "garbage":
        (folder / damage[1]).write_bytes(damage[2])


@PROFILE
@given(damage=DAMAGE)
def test_from_pretrained_on_damaged_folders(saved, damage):
    good, reference = saved
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(good, folder)
        _damage(folder, damage)
        model = copy.deepcopy(_BASE_MODEL())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # unknown config keys warn
                loaded = DGSWrapper.from_pretrained(folder, model, open_clip_tokenizer())
        except CheckpointError as exc:
            assert str(exc) and traceback.extract_tb(exc.__traceback__)[-1].filename.startswith(PKG)
            return
        except ValueError as exc:  # a config value the model cannot use (e.g. lora_layers)
            assert damage[0] == "config_value", f"{damage}: {exc}"
            assert traceback.extract_tb(exc.__traceback__)[-1].filename.startswith(PKG), exc
            return
    # loaded: only harmless damage is accepted. The weights are checksummed, so any damage to
    # them was caught; the JSON config is editable by design (a changed value is a new config)
    assert damage[0] in ("config_field", "config_value"), damage
    if damage[0] == "config_field":
        assert torch.equal(loaded.predict(_good()[0]), reference), damage
