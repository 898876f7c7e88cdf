"""dgsnet.data.captions: files, lookup, fallback, resumable atomic generation, tiny BLIP."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from dgsnet.data import (
    NEUTRAL_CAPTION,
    BlipCaptioner,
    Captioner,
    CaptionError,
    CaptionFallbackWarning,
    CaptionStore,
    CorruptImageError,
    DetectionFolder,
    TemplateCaptioner,
    caption_file_candidates,
    class_name_caption,
    find_caption_file,
    generate_captions,
    load_captions,
    read_caption_file,
    save_captions,
)

# ------------------------------------------------------------------------------------------
# caption files


def test_read_caption_file_errors(tmp_path):
    with pytest.raises(CaptionError, match="does not exist"):
        read_caption_file(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a.png": "x",\n "b.png": ')
    with pytest.raises(CaptionError, match=r"not valid JSON \(line 2"):
        read_caption_file(bad)
    bad.write_text('["a.png", "x"]')
    with pytest.raises(CaptionError, match="found a JSON list"):
        read_caption_file(bad)
    bad.write_text('{"a.png": 3}')
    with pytest.raises(CaptionError, match="'a.png' must be a string"):
        read_caption_file(bad)
    good = tmp_path / "good.json"
    save_captions({"b.png": "zwei", "a.png": "ein Bild – ü"}, good)
    assert read_caption_file(good) == {"a.png": "ein Bild – ü", "b.png": "zwei"}
    assert "ü" in good.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


def test_caption_file_locations(tmp_path):
    dataroot = tmp_path / "AIGIBench" / "train"
    dataroot.mkdir(parents=True)
    cands = caption_file_candidates(dataroot)
    assert cands[0] == tmp_path / "AIGIBench" / "train_text" / "train.json"  # reference doc
    assert cands[1] == tmp_path / "AIGIBench_text" / "train.json"  # released code
    with pytest.raises(CaptionError) as info:
        find_caption_file(dataroot)
    for c in cands:
        assert str(c) in str(info.value)
    cands[1].parent.mkdir()
    cands[1].write_text("{}")
    assert find_caption_file(dataroot) == cands[1]
    cands[0].parent.mkdir()
    cands[0].write_text('{"x.png": "y"}')
    assert find_caption_file(dataroot) == cands[0]
    store = load_captions(dataroot)  # a folder: locate the file
    assert len(store) == 1 and store.source == str(cands[0])


# ------------------------------------------------------------------------------------------
# lookup


def test_lookup_exact_normalised_absolute_relative(tmp_path, monkeypatch):
    root = tmp_path / "data" / "train"
    abs_key = str(root / "s" / "0_real" / "a.png")
    store = CaptionStore(
        {abs_key: "abs", "s/1_fake/b.png": "rel", "s\\0_real\\c.png": "windows"}, root=root
    )
    assert store.get(abs_key) == "abs"
    assert store.get(str(root) + "/s/./0_real//a.png") == "abs"  # normalised
    assert store.get(root / "s" / "1_fake" / "b.png") == "rel"  # relative key + root
    assert store.get(root / "s" / "0_real" / "c.png") == "windows"  # backslash key
    assert store.get("s/1_fake/b.png") == "rel"  # exact
    root.mkdir(parents=True)
    monkeypatch.chdir(root.parent)
    assert store.get(os.path.join("train", "s", "0_real", "a.png")) == "abs"  # relative query
    assert root / "s" / "0_real" / "a.png" in store and "nope.png" not in store
    assert store.find("nope.png") is None
    assert len(store) == 3 and set(store) == set(store.to_dict())


def test_lookup_by_suffix_from_another_machine(tmp_path):
    root = tmp_path / "AIGIBench" / "train"
    keys = {
        "/home/author/AIGIBench/train/progan/car/0_real/001.png": "car real",
        "/home/author/AIGIBench/train/progan/car/1_fake/001.png": "car fake",
        "/home/author/AIGIBench/train/sdv14/0_real/001.png": "sd real",
    }
    for store in (CaptionStore(keys, root=root), CaptionStore(keys)):
        assert store.get(root / "progan/car/0_real/001.png") == "car real"
        assert store.get(root / "progan/car/1_fake/001.png") == "car fake"
        assert store.get(root / "sdv14/0_real/001.png") == "sd real"
    assert CaptionStore(keys, suffix_match=False).find(root / "sdv14/0_real/001.png") is None


def test_suffix_never_matches_another_subsets_file(tmp_path):
    """Regression: same file name in another subset must not lend its caption."""
    root = tmp_path / "bench"
    store = CaptionStore({str(root / "biggan/0_real/img000.png"): "biggan"}, root=root)
    assert store.find(root / "progan/car/0_real/img000.png") is None
    assert store.find(root / "stylegan/0_real/img000.png") is None
    # without root: at least min_suffix (3) components must agree
    loose = CaptionStore({"/x/biggan/0_real/img000.png": "biggan"})
    assert loose.find("/y/stylegan/0_real/img000.png") is None
    assert loose.find("/y/biggan/0_real/img000.png") == "biggan"


def test_suffix_ambiguity_raises():
    store = CaptionStore({"/a/s/0_real/1.png": "a", "/b/s/0_real/1.png": "b"})
    with pytest.raises(CaptionError, match="equally well"):
        store.get("/c/s/0_real/1.png")


def test_missing_caption_errors_list_a_few():
    store = CaptionStore({"/d/s/0_real/1.png": "x"}, source="train.json")
    with pytest.raises(CaptionError, match=r"/d/s/0_real/2.png") as info:
        store.get("/d/s/0_real/2.png")
    assert "train.json" in str(info.value)
    paths = [f"/d/s/1_fake/{i}.png" for i in range(8)]
    with pytest.raises(CaptionError) as info:
        store.captions_for(paths)
    msg = str(info.value)
    assert "8 of 8 images have no caption" in msg and "... and 3 more" in msg
    assert "/d/s/1_fake/4.png" in msg and "/d/s/1_fake/5.png" not in msg
    assert info.value.missing == paths
    assert store.missing(paths + ["/d/s/0_real/1.png"]) == paths
    with pytest.raises(ValueError, match="categories"):
        store.captions_for(paths, categories=["a"])


def test_fallback_variants():
    with pytest.warns(CaptionFallbackWarning, match="no caption"):
        assert CaptionStore({}, fallback=True).get("/x/1.png", category="horse") == (
            "a photo of a horse"
        )
    with pytest.warns(CaptionFallbackWarning):
        assert CaptionStore({}, fallback="an image of {category}").get("/x/1.png", "dog") == (
            "an image of dog"
        )
    with pytest.warns(CaptionFallbackWarning):
        assert CaptionStore({}, fallback=lambda p, c: f"{Path(p).stem}!").get("/x/1.png") == "1!"
    with pytest.raises(ValueError, match="states the label"):
        CaptionStore({}, fallback="a {class_name} photo")
    with pytest.raises(TypeError, match="fallback"):
        CaptionStore({}, fallback=3)  # type: ignore[arg-type]
    store = CaptionStore({}, fallback=True)
    with pytest.warns(CaptionFallbackWarning, match="3 of 3"):
        assert store.captions_for(["/a.png", "/b.png", "/c.png"]) == [NEUTRAL_CAPTION] * 3


def test_store_type_checks():
    with pytest.raises(TypeError):
        CaptionStore([("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str -> str"):
        CaptionStore({"a.png": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        CaptionStore({}, min_suffix=0)
    assert "2 captions" in repr(CaptionStore({"a": "b", "c": "d"}))


# ------------------------------------------------------------------------------------------
# fallback captions


def test_class_name_caption_does_not_leak_the_label():
    assert class_name_caption(0) == class_name_caption(1) == NEUTRAL_CAPTION
    assert class_name_caption(0, category="car") == class_name_caption(1, category="car")
    assert class_name_caption(1, category="airplane") == "a photo of an airplane"
    assert class_name_caption(None, category="tv_monitor") == "a photo of a tv monitor"
    assert class_name_caption(1, "a picture of {category}") == NEUTRAL_CAPTION  # no category
    with pytest.warns(CaptionFallbackWarning, match="states the label"):
        assert class_name_caption(1, "a {class_name} photo") == "a fake photo"
    with pytest.warns(CaptionFallbackWarning), pytest.raises(ValueError, match="needs a label"):
        class_name_caption(None, "label {label}")
    with pytest.raises(ValueError, match="unknown field"):
        class_name_caption(0, "a {colour} photo")


def test_template_captioner():
    with pytest.warns(CaptionFallbackWarning, match="TemplateCaptioner"):
        cap = TemplateCaptioner(categories={"/a/car/0_real/1.png": "car"}.get)
    assert isinstance(cap, Captioner)
    assert cap([None, None], paths=["/a/car/0_real/1.png", "/b.png"]) == [
        "a photo of a car",
        NEUTRAL_CAPTION,
    ]
    with pytest.raises(ValueError, match="does not know labels"):
        TemplateCaptioner("a {class_name} image")


# ------------------------------------------------------------------------------------------
# generation


class Recorder:
    """A captioner that records its batch sizes and can fail after ``fail_after`` batches."""

    def __init__(
        self,
        fail_after: int | None = None,
        exc: type[BaseException] = RuntimeError,
        check_file: Path | None = None,
    ):
        self.calls: list[int] = []
        self.fail_after = fail_after
        self.exc = exc
        self.check_file = check_file
        self.snapshots: list[int] = []

    def __call__(self, images):
        if self.check_file is not None and self.check_file.exists():
            # atomicity: whenever we look, the file is complete JSON
            self.snapshots.append(len(json.loads(self.check_file.read_text())))
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise self.exc("simulated crash")
        self.calls.append(len(images))
        return [f"{im.size[0]}x{im.size[1]} #{len(self.calls)}" for im in images]


@pytest.fixture
def images(files, tmp_path):
    root = tmp_path / "set"
    paths = files.make_tree(root, {"s/0_real": 4, "s/1_fake": 3})
    return root, [str(p) for p in paths]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_generate_batches_and_absolute_keys(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps" / "train.json"
    rec = Recorder(check_file=out)
    report = generate_captions(paths, out, rec, batch_size=3, progress=False)
    assert rec.calls == [3, 3, 1]
    assert rec.snapshots == [3, 6]  # saved after each batch
    data = json.loads(out.read_text())
    assert sorted(data) == sorted(os.path.abspath(p) for p in paths)
    assert data[os.path.abspath(paths[0])] == "8x8 #1"
    assert report.new == 7 and report.existing == 0 and report.failed == []
    assert report.captions == data and report.out_file == out
    assert no_temp_files(out.parent)
    assert (out.stat().st_mode & 0o777) == 0o644


def test_generate_relative_keys_and_dataset_roundtrip(files, images, tmp_path):
    root, paths = images
    out = root / "train_text" / "train.json"
    generate_captions(
        paths, out, Recorder(), batch_size=4, progress=False, root=root, relative=True
    )
    data = json.loads(out.read_text())
    assert sorted(data)[:2] == ["s/0_real/img000.png", "s/0_real/img001.png"]
    ds = DetectionFolder(root, captions=out)
    assert all(ds.caption(i) for i in range(len(ds)))
    with pytest.raises(ValueError, match="needs root"):
        generate_captions(paths, out, Recorder(), relative=True)
    outside = files.write_image(tmp_path / "elsewhere.png")
    rec = Recorder()
    with pytest.raises(ValueError, match="not inside root"):
        generate_captions(
            paths + [outside], tmp_path / "o.json", rec, root=root, relative=True, progress=False
        )
    assert rec.calls == [] and not (tmp_path / "o.json").exists()  # failed before any work


def test_generate_resumes_after_interruption(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps.json"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_captions(paths, out, Recorder(fail_after=2), batch_size=2, progress=False)
    first = json.loads(out.read_text())  # valid JSON, both finished batches kept
    assert len(first) == 4
    assert no_temp_files(tmp_path)
    rec = Recorder()
    report = generate_captions(paths, out, rec, batch_size=2, progress=False)
    assert rec.calls == [2, 1]  # only the 3 remaining images
    assert report.existing == 4 and report.new == 3
    final = json.loads(out.read_text())
    assert len(final) == 7
    assert all(final[k] == v for k, v in first.items())  # nothing redone or lost
    # a third run has nothing to do
    rec3 = Recorder()
    assert generate_captions(paths, out, rec3, progress=False).new == 0 and rec3.calls == []


def test_generate_resume_accepts_relative_existing_keys(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps.json"
    out.write_text(json.dumps({"s/0_real/img000.png": "old"}))
    rec = Recorder()
    report = generate_captions(paths, out, rec, root=root, progress=False, batch_size=100)
    assert report.existing == 1 and rec.calls == [6]
    assert json.loads(out.read_text())["s/0_real/img000.png"] == "old"


def test_interrupt_flushes_pending_batches(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps.json"
    with pytest.raises(KeyboardInterrupt):
        generate_captions(
            paths,
            out,
            Recorder(fail_after=3, exc=KeyboardInterrupt),
            batch_size=2,
            save_every=100,
            progress=False,
        )
    assert len(json.loads(out.read_text())) == 6  # written on the way out


def test_save_every(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps.json"
    rec = Recorder(check_file=out)
    generate_captions(paths, out, rec, batch_size=1, save_every=3, progress=False)
    # the file appears after batch 3 and is rewritten after batch 6 (and at the end)
    assert rec.snapshots == [3, 3, 3, 6]
    assert len(json.loads(out.read_text())) == 7


def test_failed_write_keeps_old_file(images, tmp_path, monkeypatch):
    root, paths = images
    out = tmp_path / "caps.json"
    generate_captions(paths[:2], out, Recorder(), progress=False)
    before = out.read_bytes()

    import dgsnet.io

    def broken_fsync(fd):  # the temp file holds the new JSON; flushing it to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(dgsnet.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        generate_captions(paths, out, Recorder(), progress=False)
    assert out.read_bytes() == before
    assert no_temp_files(tmp_path)


def test_existing_invalid_file_is_not_clobbered(images, tmp_path):
    root, paths = images
    out = tmp_path / "caps.json"
    out.write_text("[1, 2]")
    with pytest.raises(CaptionError, match="JSON object"):
        generate_captions(paths, out, Recorder(), progress=False)
    assert out.read_text() == "[1, 2]"


def test_generate_unreadable_images(files, images, tmp_path):
    root, paths = images
    bad = str(files.write_truncated(root / "s" / "1_fake" / "zz_trunc.png"))
    out = tmp_path / "caps.json"
    with pytest.raises(CorruptImageError, match="zz_trunc.png"):
        generate_captions(paths + [bad], out, Recorder(), batch_size=3, progress=False)
    assert len(json.loads(out.read_text())) == 6  # earlier batches kept
    with pytest.warns(UserWarning, match="could not be read"):
        report = generate_captions(
            paths + [bad], out, Recorder(), batch_size=3, progress=False, on_error="skip"
        )
    assert report.failed[0][0] == bad and report.new == 1
    assert len(json.loads(out.read_text())) == 7


def test_generate_argument_checks(images, tmp_path):
    root, paths = images
    out = tmp_path / "c.json"
    with pytest.raises(ValueError, match="batch_size"):
        generate_captions(paths, out, Recorder(), batch_size=0)
    with pytest.raises(ValueError, match="save_every"):
        generate_captions(paths, out, Recorder(), save_every=0)
    with pytest.raises(ValueError, match="on_error"):
        generate_captions(paths, out, Recorder(), on_error="ignore")
    with pytest.raises(TypeError, match="callable"):
        generate_captions(paths, out, "blip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="returned 1 captions for 2"):
        generate_captions(paths, out, lambda ims: ["x"], batch_size=2, progress=False)
    with pytest.raises(TypeError, match="list of"):
        generate_captions(paths, out, lambda ims: "x", batch_size=2, progress=False)
    with pytest.raises(TypeError, match="returned a int"):
        generate_captions(paths, out, lambda ims: [1] * len(ims), progress=False)


def test_generate_dedupes_and_empty(images, tmp_path):
    root, paths = images
    rec = Recorder()
    report = generate_captions(
        paths + paths[:3], tmp_path / "c.json", rec, batch_size=100, progress=False
    )
    assert rec.calls == [7] and report.new == 7
    empty = tmp_path / "empty.json"
    generate_captions([], empty, Recorder(), progress=False)
    assert json.loads(empty.read_text()) == {}


def test_progress_bar(images, tmp_path, capsys):
    root, paths = images
    out = tmp_path / "c.json"
    generate_captions(paths[:3], out, Recorder(), batch_size=2, progress=True)
    generate_captions(paths, out, Recorder(), batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "captioning" in err and "7/7" in err


def test_template_captioner_in_generation(images, tmp_path):
    root, paths = images
    with pytest.warns(CaptionFallbackWarning):
        cap = TemplateCaptioner(categories=lambda p: "car")
    out = tmp_path / "c.json"
    generate_captions(paths, out, cap, progress=False)
    assert set(json.loads(out.read_text()).values()) == {"a photo of a car"}


# ------------------------------------------------------------------------------------------
# BLIP (tiny random model, built offline)


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[DEC]",
        "a",
        "photo",
        "of",
        "cat",
        "dog",
        "on",
        "the",
        "grass",
        "red",
        "car",
    ]
    vocab = {w: i for i, w in enumerate(words)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
    )
    config = transformers.BlipConfig(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        text_config=dict(
            vocab_size=len(words),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=16,
            max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"],
            pad_token_id=0,
            sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"],
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.BlipForConditionalGeneration(config)
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return model, processor


def test_blip_captioner_mechanics(tiny_blip, images, tmp_path):
    from PIL import Image

    model, processor = tiny_blip
    cap = BlipCaptioner.from_model(model, processor, device="cpu", max_new_tokens=4)
    assert isinstance(cap, Captioner)
    assert "BlipCaptioner" in repr(cap) and cap.device.type == "cpu"
    imgs = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    out = cap(imgs)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert cap(imgs) == out  # greedy decoding is deterministic
    assert cap([]) == []

    root, paths = images
    dest = tmp_path / "blip.json"
    with pytest.raises(RuntimeError):
        generate_captions(paths, dest, _FailAfter(cap, 2), batch_size=2, progress=False)
    assert len(json.loads(dest.read_text())) == 4
    report = generate_captions(paths, dest, cap, batch_size=2, progress=False)
    assert report.existing == 4 and report.new == 3
    assert len(json.loads(dest.read_text())) == 7


def test_blip_prompt(tiny_blip):
    from PIL import Image

    model, processor = tiny_blip
    cap = BlipCaptioner.from_model(model, processor, max_new_tokens=3, prompt="a photo of")
    assert len(cap([Image.new("RGB", (32, 32))] * 2)) == 2
    with pytest.raises(ValueError, match="max_new_tokens"):
        BlipCaptioner.from_model(model, processor, max_new_tokens=0)


class _FailAfter:
    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, images):
        if self.calls >= self.n:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.inner(images)


def test_blip_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'dgsnet\[hf\]'"):
        BlipCaptioner()


def test_blip_loads_from_a_local_folder(tiny_blip, tmp_path):
    model, processor = tiny_blip
    model.save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = BlipCaptioner(
            tmp_path / "blip", device="cpu", max_new_tokens=2, local_files_only=True
        )
    from PIL import Image

    assert len(cap([Image.new("RGB", (32, 32))])) == 1
