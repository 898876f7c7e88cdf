"""Bad input everywhere: property tests that every public entry point refuses wrong input with
a clear ``TypeError``/``ValueError`` (or the library's documented subclass: ``CheckpointError``,
``DatasetError``, ``CaptionError``) raised by dgsnet itself, never a crash deep inside torch
and never a silently wrong result.

"Clear" is checked mechanically: the exception is one of the allowed types, its message is not
empty, and the frame that raised it lies in the ``dgsnet`` package (not in torch, numpy or
PIL). Entry points: ``GradientSurgery.apply``, every rule (and ``fuse``), ``sign_split``,
``drop_nonfinite``, ``DGSWrapper.forward``/``predict``/``encode_text``, ``DGSConfig`` and
``from_dict``/``from_json``, ``DGSWrapper.from_pretrained`` on damaged folders, the dataset
readers and transforms of ``dgsnet.data``, and the ``dgsnet`` command line (exit status 2 and
one error line).

Non-finite input (decided behaviour, see docs/reliability.md): NaN/Inf *images* or *text
features* make ``DGSWrapper.forward`` raise ``ValueError`` naming the batch positions when
``DGSConfig.nonfinite="raise"`` (default); with ``"ignore"`` the non-finite loss goes through to
the caller (the training engine then raises ``NonFiniteError`` or skips the step). NaN/Inf
*reference gradients* make the rules raise ``ValueError``; ``nonfinite="ignore"`` skips the
surgery for the affected samples. A non-finite *incoming* gradient passes through (loss
scalers rely on seeing it).

``DGSNET_BAD_INPUT_EXAMPLES`` raises the Hypothesis example count (default 25).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import shutil
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.io import CheckpointError
from dgsnet.surgery import (
    Compose,
    ConflictProjection,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryStats,
    drop_nonfinite,
    fuse,
    sign_split,
)
from tests.helpers import make_lora_nonzero, open_clip_tokenizer, tiny_open_clip

PKG = str(Path(__file__).resolve().parents[1] / "dgsnet")
EXAMPLES = int(os.environ.get("DGSNET_BAD_INPUT_EXAMPLES", "25"))
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
CAPTIONS = ["a photo of a cat", "a red car", "two dogs", "a bowl of fruit"]
B, D = 4, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def raises_clearly(fn, types=(TypeError, ValueError), match=None, where=PKG):
    """Call ``fn``; it must raise one of ``types`` with a message, from a frame in ``where``."""
    try:
        fn()
    except types as exc:
        msg = str(exc)
        assert msg.strip(), f"{type(exc).__name__} without a message"
        if match is not None:
            assert match in msg, f"{match!r} not in {msg!r}"
        if where is not None:
            origin = traceback.extract_tb(exc.__traceback__)[-1].filename
            assert origin.startswith(where), f"raised in {origin}, not by dgsnet: {msg}"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"expected {types}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError("no exception: bad input was accepted")


# ------------------------------------------------------------------------------------------
# corruptions of a tensor argument
# ------------------------------------------------------------------------------------------
CORRUPTIONS = (
    "int",
    "bool",
    "complex",
    "meta",
    "extra_dim",
    "missing_dim",
    "last_dim",
    "str",
    "list",
    "none",
    "ndarray",
    "float",
)


def corrupt(t: torch.Tensor, kind: str):
    if kind == "int":
        return (t * 10).to(torch.int64)
    if kind == "bool":
        return t > 0
    if kind == "complex":
        return t.to(torch.complex64)
    if kind == "meta":
        return t.to("meta")
    if kind == "extra_dim":
        return t.unsqueeze(0)
    if kind == "missing_dim":
        return t[0] if t.dim() > 1 else t.sum()
    if kind == "last_dim":
        return torch.cat([t, t[..., :1]], dim=-1)
    if kind == "str":
        return "a tensor"
    if kind == "list":
        return t.tolist()
    if kind == "none":
        return None
    if kind == "ndarray":
        return t.numpy()
    if kind == "float":
        return 1.5
    raise AssertionError(kind)


def _tensors(seed: int, shape=(B, D), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(2)]


# ------------------------------------------------------------------------------------------
# GradientSurgery.apply and the rules
# ------------------------------------------------------------------------------------------
def _rules():
    return {
        "suppression": OrthogonalSuppression(),
        "alignment": PriorAlignment(),
        "conflict": ConflictProjection(),
        "compose": Compose([PriorAlignment(), OrthogonalSuppression()]),
        "fused": fuse(OrthogonalSuppression()),  # validation happens before any compilation
    }


@PROFILE
@given(
    target=st.sampled_from(["x", "ref"]),
    kind=st.sampled_from(CORRUPTIONS),
    seed=st.integers(0, 2**16),
)
def test_gradient_surgery_apply_refuses_bad_tensors(target, kind, seed):
    x, ref = _tensors(seed)
    if target == "x":
        x = corrupt(x, kind)
    else:
        ref = corrupt(ref, kind)
    # raised by apply itself (the forward), not later in backward
    raises_clearly(lambda: GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": ref}))


@pytest.mark.parametrize(
    "args",
    [
        ("rule", "not a rule"),
        ("refs", [1]),
        ("refs", {}),
        ("refs", {"help": torch.zeros(B, D)}),
        ("stats", "stats"),
        ("nonfinite", "skip"),
        ("x", torch.tensor(1.0)),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else str(a),
)
def test_gradient_surgery_apply_refuses_bad_arguments(args):
    kw = {
        "x": torch.zeros(B, D),
        "rule": OrthogonalSuppression(),
        "refs": {"harm": torch.zeros(B, D)},
        "stats": SurgeryStats(),
        "nonfinite": "raise",
    }
    kw[args[0]] = args[1]
    raises_clearly(
        lambda: GradientSurgery.apply(kw["x"], kw["rule"], kw["refs"], kw["stats"], kw["nonfinite"])
    )


@PROFILE
@given(
    rule=st.sampled_from(list(_rules())),
    target=st.sampled_from(["grad", "ref"]),
    kind=st.sampled_from(CORRUPTIONS),
    seed=st.integers(0, 2**16),
)
def test_every_rule_refuses_bad_tensors(rule, target, kind, seed):
    r = _rules()[rule]
    grad, ref = _tensors(seed)
    if target == "grad":
        grad = corrupt(grad, kind)
    else:
        ref = corrupt(ref, kind)
    if target == "ref" and kind == "none":
        refs = {k: None for k in r.refs}
    else:
        refs = {k: ref for k in r.refs}
    raises_clearly(lambda: r(grad, refs))


@pytest.mark.parametrize("rule", list(_rules()))
@pytest.mark.parametrize("refs", [None, {}, "harm", [torch.zeros(B, D)]], ids=str)
def test_every_rule_refuses_missing_references(rule, refs):
    r = _rules()[rule]
    raises_clearly(lambda: r(torch.zeros(B, D), refs))


@PROFILE
@given(
    rule=st.sampled_from(["suppression", "alignment", "conflict", "compose"]),
    b=st.integers(1, 6),
    d=st.integers(1, 12),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    rows=st.sets(st.integers(0, 5), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_nonfinite_references_raise_or_skip_exactly_those_samples(rule, b, d, value, rows, seed):
    rows = sorted(r for r in rows if r < b) or [0]
    r = _rules()[rule]
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(b, d, generator=g, dtype=torch.float64)
    refs = {k: torch.randn(b, d, generator=g, dtype=torch.float64) for k in r.refs}
    key = r.refs[0]
    refs[key][rows, 0] = value
    raises_clearly(lambda: r(grad, refs), match="NaN or Inf")
    # nonfinite="ignore": the broken samples get the surgery of the remaining references only
    x = torch.zeros(b, d, dtype=torch.float64, requires_grad=True)
    GradientSurgery.apply(x, r, refs, None, "ignore").backward(grad)
    expected = r(grad, drop_nonfinite(refs))
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-14)
    if len(r.refs) == 1:  # the only reference is broken: those samples pass unchanged
        torch.testing.assert_close(x.grad[rows], grad[rows], rtol=0, atol=0)


@PROFILE
@given(
    rule=st.sampled_from(["suppression", "alignment", "conflict", "compose"]),
    shape=st.sampled_from([(0, 8), (3, 0), (0, 0), (2, 0, 5), (1, 1)]),
)
def test_empty_and_degenerate_shapes_keep_their_shape(rule, shape):
    r = _rules()[rule]
    grad = torch.randn(shape)
    out = r(grad, {k: torch.randn(shape) for k in r.refs})
    assert out.shape == grad.shape and out.dtype == grad.dtype and torch.isfinite(out).all()


def test_incoming_nonfinite_gradient_passes_through_without_error():
    x = torch.zeros(2, 4, requires_grad=True)
    y = GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": torch.randn(2, 4)})
    y.backward(torch.full((2, 4), math.inf))
    assert not torch.isfinite(x.grad).all()  # a loss scaler must see the overflow


def test_meta_tensors_are_shape_only_runs():
    """All-meta input (no data anywhere) works: the rules skip the data-reading checks."""
    for name, r in _rules().items():
        if name == "fused":
            continue
        m = torch.empty(B, D, device="meta")
        out = r(m, {k: torch.empty(B, D, device="meta") for k in r.refs})
        assert out.device.type == "meta" and out.shape == (B, D)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sign_split("x"),
        lambda: sign_split(torch.ones(3, dtype=torch.complex64)),
        lambda: sign_split(torch.ones(3, dtype=torch.bool)),
        lambda: drop_nonfinite([torch.ones(3)]),
        lambda: drop_nonfinite({"a": "x"}),
        lambda: OrthogonalSuppression(eps="1"),
        lambda: OrthogonalSuppression(eps=math.nan),
        lambda: OrthogonalSuppression(conflict_only=1),
        lambda: OrthogonalSuppression(ref=3),
        lambda: PriorAlignment(weight=-1),
        lambda: PriorAlignment(weight=math.inf),
        lambda: PriorAlignment(scale="per_rank"),
        lambda: ConflictProjection(ref=""),
        lambda: Compose("ab"),
        lambda: Compose([1]),
        lambda: fuse("rule"),
    ],
)
def test_helpers_and_rule_constructors_refuse_bad_arguments(call):
    raises_clearly(call)


# ------------------------------------------------------------------------------------------
# DGSWrapper: forward, predict, encode_text
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# DGSConfig
# ------------------------------------------------------------------------------------------
FIELDS = [f for f in DGSConfig.__dataclass_fields__]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(
        [
            "auto",
            "bce",
            "ce",
            "reference",
            "invariant",
            "raise",
            "ignore",
            "shared",
            "copy",
            "project_then_align",
            "q_proj",
        ]
    ),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


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


# ------------------------------------------------------------------------------------------
# from_pretrained on damaged folders
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# dgsnet.data: dataset readers, caption files, collate, transforms
# ------------------------------------------------------------------------------------------
FILE_KINDS = st.sampled_from(["good", "good", "corrupt", "empty", "text"])
CLASS_SPEC = st.one_of(st.none(), st.lists(FILE_KINDS, max_size=3))  # None: folder missing


def _write(path: Path, kind: str, i: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        Image.new("RGB", (8, 8), (i * 40 % 256, 10, 20)).save(path)
    elif kind == "corrupt":
        data = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(data, format="PNG")
        path.write_bytes(data.getvalue()[:40])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not an image")


@PROFILE
@given(spec=st.lists(st.tuples(CLASS_SPEC, CLASS_SPEC), min_size=1, max_size=2))
def test_detection_folder_refuses_or_reads_every_item(spec):
    from dgsnet.data import CorruptImageError, DatasetError, DetectionFolder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        bad_files = 0
        for s, classes in enumerate(spec):
            for cls, files in zip(("0_real", "1_fake"), classes, strict=True):
                if files is None:
                    continue
                (root / f"s{s}" / cls).mkdir(parents=True)
                for i, kind in enumerate(files):
                    _write(root / f"s{s}" / cls / f"{i}.png", kind, i)
                    bad_files += kind != "good"
        try:
            ds = DetectionFolder(root)
        except DatasetError as exc:
            assert str(exc)
            return
        loaded = 0
        for i in range(len(ds)):
            try:
                ds[i]
                loaded += 1
            except CorruptImageError as exc:
                assert ds.paths[i] in str(exc)
        assert loaded == len(ds) - bad_files
        if bad_files:
            raises_clearly(ds.verify, DatasetError)
        else:
            assert ds.verify() == []


@PROFILE
@given(
    data=st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        st.sampled_from([b"[1]", b'{"a": 1}', b'{"a": null}', b"\xff\xfe", b"{}", b'{"a": "b"}']),
    )
)
def test_caption_file_reader(data):
    from dgsnet.data import CaptionError, read_caption_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "caps.json"
        path.write_bytes(data)
        try:
            captions = read_caption_file(path)
        except CaptionError as exc:
            assert str(path) in str(exc)
            return
        assert isinstance(captions, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in captions.items())


@pytest.mark.parametrize(
    "batch",
    [
        [],
        "abc",
        [1, 2],
        [(torch.zeros(3, 2, 2), "c", "x", "s", 0, "p")],
        [(torch.zeros(3, 2, 2), "c", 0, "s", 0, "p"), (torch.zeros(3, 4, 4), "c", 1, "s", 1, "p")],
    ],
)
def test_collate_refuses_bad_batches(batch):
    from dgsnet.data import collate

    raises_clearly(lambda: collate(batch), where=None)  # Sample(*item) may raise in Python


@PROFILE
@given(
    shape=st.sampled_from(
        [(3, 64, 64), (1, 64, 64), (64, 64), (4, 64, 64), (3, 0, 0), (3, 64), (2, 3, 64, 64)]
    ),
    dtype=st.sampled_from(
        [torch.uint8, torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64]
    ),
    fill=st.sampled_from(["rand", "nan", "inf"]),
)
def test_patch_selection_refuses_or_returns_a_finite_image(shape, dtype, fill):
    from dgsnet.data import PatchSelection

    t = torch.rand(shape)
    if fill != "rand" and t.numel():
        t.view(-1)[0] = math.nan if fill == "nan" else math.inf
    t = (t * 255).to(dtype) if dtype == torch.uint8 and fill == "rand" else t.to(dtype)
    transform = PatchSelection(deterministic=True)
    try:
        out = transform(t)
    except (TypeError, ValueError) as exc:
        assert str(exc)
        return
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def _cli(argv):
    cli = pytest.importorskip("dgsnet.cli")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, err.getvalue()


def _assert_usage_error(argv):
    code, err = _cli(argv)
    assert code == 2, (argv, code, err)
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("dgsnet"), err
    assert "Traceback" not in err


MISSING = "/nonexistent/dgsnet-data"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["train", "--out", "/tmp/x"],
        ["train", MISSING, "--out", "/tmp/x"],
        ["train", MISSING, "--batch-size", "abc", "--out", "/tmp/x"],
        ["train", MISSING, "--batch-size", "0", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lr", "nan", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lr", "-1", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--align-weight", "-1", "--out", "/tmp/x", "--model", "tiny"],
        ["train", MISSING, "--lora-rank", "0", "--out", "/tmp/x", "--model", "tiny"],
        ["train", "--config", "/nonexistent.json", "--out", "/tmp/x"],
        ["eval", "/nonexistent-ckpt", MISSING],
        ["eval", "/nonexistent-ckpt", MISSING, "--jpeg-quality", "500"],
        ["predict", "/nonexistent-ckpt", "/nonexistent.png"],
        ["caption", MISSING, "--template", ""],
    ],
    ids=lambda a: " ".join(a)[:40] or "no-args",
)
def test_cli_bad_input_exits_2_with_one_error_line(argv):
    _assert_usage_error(argv)


@pytest.mark.parametrize(
    "content", ["{not json", "[1]", '{"no_such_option": 1}', '{"batch_size": "x"}']
)
def test_cli_bad_config_file(tmp_path, content):
    path = tmp_path / "recipe.json"
    path.write_text(content)
    _assert_usage_error(["train", "--config", str(path), "--out", str(tmp_path / "out")])


@PROFILE
@given(
    option=st.sampled_from(
        [
            "--batch-size",
            "--epochs",
            "--stage1-epochs",
            "--lr",
            "--workers",
            "--seed",
            "--lora-rank",
            "--lora-dropout",
            "--align-weight",
        ]
    ),
    value=st.one_of(
        st.text(max_size=6),
        st.integers(-5, 5).map(str),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0.0", "1.5"]),
    ),
)
def test_cli_numeric_options_never_crash(option, value):
    """Any value: exit 2 with one error line (the data root does not exist, so a valid value
    stops there, before any model is built)."""
    _assert_usage_error(
        [
            "train",
            MISSING,
            "--out",
            "/tmp/dgsnet-never-written",
            "--model",
            "tiny",
            f"{option}={value}",
        ]
    )
