"""dgsnet.data.datasets: both layouts, ordering, errors, verification, collate."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Subset

from dgsnet.data import (
    Batch,
    CaptionError,
    CaptionFallbackWarning,
    CaptionStore,
    CorruptImageError,
    DatasetError,
    DetectionFolder,
    GenImageFolder,
    Sample,
    collate,
    detect_layout,
    list_images,
    load_captions,
    open_dataset,
)


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0


# ------------------------------------------------------------------------------------------
# detection layout


def test_detection_layout_subsets_labels_order(detection_root):
    ds = DetectionFolder(detection_root)
    assert len(ds) == 12
    assert ds.subsets() == ["biggan", "progan", "stylegan"]
    assert ds.counts() == {
        "biggan": {"real": 2, "fake": 3},
        "progan": {"real": 3, "fake": 2},
        "stylegan": {"real": 1, "fake": 1},
    }
    rel = [os.path.relpath(p, detection_root) for p in ds.paths]
    assert rel[:5] == [
        "biggan/0_real/img000.png",
        "biggan/0_real/img001.png",
        "biggan/1_fake/img000.png",
        "biggan/1_fake/img001.png",
        "biggan/1_fake/img002.png",
    ]
    # categories sorted inside their subset, real before fake inside a category
    assert rel[5:10] == [
        "progan/car/0_real/img000.png",
        "progan/car/1_fake/img000.png",
        "progan/cat/0_real/img000.png",
        "progan/cat/0_real/img001.png",
        "progan/cat/1_fake/img000.png",
    ]
    assert ds.labels == [0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1]
    assert ds.categories[5:10] == ["car", "car", "cat", "cat", "cat"]
    assert ds.categories[0] is None
    # deterministic: a second listing is identical
    assert DetectionFolder(detection_root).paths == ds.paths
    assert "3 subsets" in repr(ds)


def test_sample_fields_and_pil_image(detection_root):
    ds = DetectionFolder(detection_root)
    s = ds[2]
    assert isinstance(s, Sample)
    image, caption, label, subset, index, path = s  # unpacks as a tuple
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (8, 8)
    assert caption is None and label == 1 and subset == "biggan" and index == 2
    assert path == ds.paths[2]
    assert ds[-1].index == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.load(0).size == (8, 8)


def test_root_holding_class_dirs_is_one_subset(files, tmp_path):
    root = tmp_path / "my_testset"
    files.make_tree(root, {"0_real": 2, "1_fake": 1})
    ds = DetectionFolder(root)
    assert ds.subsets() == ["my_testset"]
    assert ds.labels == [0, 0, 1]


def test_extensions_case_insensitive_nested_and_hidden(files, tmp_path):
    root = tmp_path / "d"
    real = root / "s" / "0_real"
    for name in ["a.PNG", "b.JpEg", "c.jpg", "d.bmp", "e.webp", "f.tif", "g.TIFF"]:
        files.write_image(real / name)
    files.write_image(real / "sub" / "h.png")  # class folders are read recursively
    (real / "notes.txt").write_text("not an image")
    files.write_image(real / "._hidden.png")  # macOS resource fork style
    files.write_image(root / "s" / "1_fake" / "x.png")
    ds = DetectionFolder(root)
    names = [os.path.relpath(p, real) for p in ds.paths if ds.labels[ds.paths.index(p)] == 0]
    assert names == ["a.PNG", "b.JpEg", "c.jpg", "d.bmp", "e.webp", "f.tif", "g.TIFF", "sub/h.png"]
    for i in range(len(ds)):
        assert ds[i].image.mode == "RGB"
    assert [os.path.basename(p) for p in list_images(real)][-1] == "h.png"


def test_subsets_filter(detection_root):
    ds = DetectionFolder(detection_root, subsets=["stylegan", "biggan"])
    assert ds.subsets() == ["biggan", "stylegan"]
    ds1 = DetectionFolder(detection_root, subsets="progan")
    assert ds1.subsets() == ["progan"] and len(ds1) == 5
    with pytest.raises(DatasetError, match=r"'nope'.*available.*biggan"):
        DetectionFolder(detection_root, subsets=["nope"])


def test_ignored_dirs_recorded(detection_root):
    (detection_root / "train_text").mkdir()
    (detection_root / "train_text" / "train.json").write_text("{}")
    ds = DetectionFolder(detection_root)
    assert [p.name for p in ds.ignored_dirs] == ["train_text"]
    assert len(ds) == 12


# ------------------------------------------------------------------------------------------
# errors


def test_root_missing_or_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        DetectionFolder(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        DetectionFolder(f)
    with pytest.raises(TypeError):
        DetectionFolder(123)  # type: ignore[arg-type]
    assert issubclass(DatasetError, ValueError)


def test_no_class_folders(files, tmp_path):
    files.make_tree(tmp_path / "r", {"a/b/c/d": 1})
    with pytest.raises(DatasetError, match="no 0_real/1_fake folders under"):
        DetectionFolder(tmp_path / "r")


def test_no_class_folders_hints_genimage(genimage_root):
    with pytest.raises(DatasetError, match="GenImageFolder"):
        DetectionFolder(genimage_root)


def test_subset_missing_one_class(files, tmp_path):
    root = tmp_path / "r"
    files.make_tree(root, {"good/0_real": 1, "good/1_fake": 1, "onlyfake/1_fake": 2})
    with pytest.raises(DatasetError) as info:
        DetectionFolder(root)
    msg = str(info.value)
    assert "'onlyfake'" in msg and "'0_real'" in msg and "allow_single_class" in msg
    ds = DetectionFolder(root, allow_single_class=True)
    assert ds.counts()["onlyfake"] == {"real": 0, "fake": 2}


def test_category_missing_one_class_names_category(files, tmp_path):
    root = tmp_path / "r"
    files.make_tree(root, {"progan/car/0_real": 1, "progan/car/1_fake": 1, "progan/cat/0_real": 1})
    with pytest.raises(DatasetError, match=r"subset 'progan' \(folder 'cat'\).*'1_fake'"):
        DetectionFolder(root)


def test_empty_class_folder_named(files, tmp_path):
    root = tmp_path / "r"
    files.make_tree(root, {"s/0_real": 2})
    (root / "s" / "1_fake").mkdir()
    (root / "s" / "1_fake" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"1_fake contains no images"):
        DetectionFolder(root)
    # an empty class folder counts as a missing class when single-class sets are allowed
    assert len(DetectionFolder(root, allow_single_class=True)) == 2


def test_subset_with_no_images_at_all(tmp_path):
    root = tmp_path / "r"
    (root / "s" / "0_real").mkdir(parents=True)
    (root / "s" / "1_fake").mkdir(parents=True)
    with pytest.raises(DatasetError, match="contains no images"):
        DetectionFolder(root, allow_single_class=True)


# ------------------------------------------------------------------------------------------
# broken images


@pytest.fixture
def broken_root(files, tmp_path):
    root = tmp_path / "broken"
    files.make_tree(root, {"s/0_real": 2, "s/1_fake": 1})
    bad_png = files.write_truncated(root / "s" / "0_real" / "trunc.png", "PNG")
    bad_jpg = files.write_truncated(root / "s" / "1_fake" / "trunc.jpg", "JPEG")
    junk = root / "s" / "1_fake" / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    return root, [bad_png, bad_jpg, junk]


def test_truncated_and_junk_raise_at_load_with_path(broken_root):
    root, bad = broken_root
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    ds = DetectionFolder(root)  # listing does not decode
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for path in bad:
        i = ds.paths.index(str(path))
        with pytest.raises(CorruptImageError) as info:
            ds[i]
        assert str(path) in str(info.value)
        assert info.value.path == str(path)
        assert isinstance(info.value, DatasetError)
        assert info.value.__cause__ is not None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_verify_lists_every_bad_file(broken_root):
    root, bad = broken_root
    ds = DetectionFolder(root)
    with pytest.raises(DatasetError) as info:
        ds.verify()
    msg = str(info.value)
    assert "3 of 6 images" in msg
    for path in bad:
        assert str(path) in msg
    found = ds.verify(raise_error=False)
    assert sorted(p for p, _ in found) == sorted(str(p) for p in bad)
    assert ds.verify(num_workers=2, raise_error=False) == found
    with pytest.raises(DatasetError, match="trunc.png"):
        DetectionFolder(root, verify=True)


def test_verify_clean_dataset(detection_root):
    ds = DetectionFolder(detection_root, verify=True)
    assert ds.verify() == []


def test_warns_when_someone_enabled_truncated_loading(detection_root, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(UserWarning, match="LOAD_TRUNCATED_IMAGES"):
        DetectionFolder(detection_root)


# ------------------------------------------------------------------------------------------
# GenImage


def test_genimage_layout(genimage_root):
    val = GenImageFolder(genimage_root, split="val")
    assert val.subsets() == ["ADM", "SDv14"]
    assert val.counts() == {"ADM": {"real": 1, "fake": 2}, "SDv14": {"real": 3, "fake": 1}}
    assert val.labels[:3] == [0, 1, 1]  # nature before ai
    assert all("/val/" in p for p in val.paths)
    assert set(val.categories) == {None}
    train = GenImageFolder(genimage_root)
    assert len(train) == 6 and train.split == "train"
    assert GenImageFolder(genimage_root, "val", subsets=["SDv14"]).subsets() == ["SDv14"]


def test_genimage_root_is_one_generator(genimage_root):
    ds = GenImageFolder(genimage_root / "ADM", split="val")
    assert ds.subsets() == ["ADM"] and len(ds) == 3


def test_genimage_errors(files, genimage_root, detection_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        GenImageFolder(genimage_root, split="test")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="DetectionFolder"):
        GenImageFolder(detection_root)
    root = tmp_path / "g"
    files.make_tree(root, {"X/val/ai": 2})
    with pytest.raises(DatasetError, match=r"'X'.*'nature'"):
        GenImageFolder(root, split="val")
    assert len(GenImageFolder(root, split="val", allow_single_class=True)) == 2


# ------------------------------------------------------------------------------------------
# layout detection


def test_detect_layout(files, detection_root, genimage_root, tmp_path):
    assert detect_layout(detection_root) == "detection"
    assert detect_layout(detection_root / "biggan") == "detection"
    assert detect_layout(genimage_root) == "genimage"
    assert detect_layout(genimage_root / "SDv14") == "genimage"
    files.make_tree(tmp_path / "plain", {"a/b": 1})
    with pytest.raises(DatasetError, match="neither dataset layout"):
        detect_layout(tmp_path / "plain")
    with pytest.raises(DatasetError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    both = tmp_path / "both"
    files.make_tree(both, {"s/0_real": 1, "g/val/ai": 1})
    with pytest.raises(DatasetError, match="both"):
        detect_layout(both)


def test_open_dataset(detection_root, genimage_root):
    assert isinstance(open_dataset(detection_root), DetectionFolder)
    ds = open_dataset(genimage_root, split="train")
    assert isinstance(ds, GenImageFolder) and ds.split == "train"


# ------------------------------------------------------------------------------------------
# per-subset views and collate


def test_by_subset_keeps_global_index(detection_root):
    ds = DetectionFolder(detection_root, transform=to_tensor)
    parts = ds.by_subset()
    assert list(parts) == ["biggan", "progan", "stylegan"]
    assert all(isinstance(p, Subset) for p in parts.values())
    idx = ds.subset_indices()
    assert idx["stylegan"] == [10, 11]
    s = parts["stylegan"][1]
    assert s.index == 11 and s.subset == "stylegan"
    assert sum(len(p) for p in parts.values()) == len(ds)


def test_collate_with_dataloader(detection_root):
    captions = {p: f"caption {i}" for i, p in enumerate(DetectionFolder(detection_root).paths)}
    ds = DetectionFolder(detection_root, transform=to_tensor, captions=captions)
    loader = DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert isinstance(b, Batch)
    images, caps, labels, indices, subsets = b
    assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
    assert caps == [f"caption {i}" for i in range(5)]
    assert labels.dtype == torch.long and labels.tolist() == [0, 0, 1, 1, 1]
    assert indices.tolist() == [0, 1, 2, 3, 4]
    assert subsets == ["biggan"] * 5
    assert torch.cat([x.indices for x in batches]).tolist() == list(range(len(ds)))


def test_collate_edge_cases(detection_root):
    ds = DetectionFolder(detection_root)  # PIL images stay a list
    b = collate([ds[0], ds[1]])
    assert isinstance(b.images, list) and len(b.images) == 2
    assert b.captions == [None, None]
    with pytest.raises(ValueError, match="empty"):
        collate([])
    a = Sample(torch.zeros(3, 4, 4), "x", 0, "s", 0, "p")
    c = Sample(torch.zeros(3, 5, 5), "y", 1, "s", 1, "q")
    with pytest.raises(ValueError, match="different shapes"):
        collate([a, c])
    assert collate([tuple(a)]).labels.tolist() == [0]  # plain tuples are accepted


def test_transform_must_be_callable(detection_root):
    with pytest.raises(TypeError, match="transform"):
        DetectionFolder(detection_root, transform="resize")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# captions inside datasets


def test_captions_from_mapping_file_and_auto(files, tmp_path):
    dataroot = tmp_path / "AIGIBench" / "train"
    files.make_tree(
        dataroot,
        {"progan/car/0_real": 1, "progan/car/1_fake": 1, "sdv14/0_real": 1, "sdv14/1_fake": 1},
    )
    paths = DetectionFolder(dataroot).paths
    # keys written on another machine, in the reference location <parent>/<split>_text/<split>.json
    foreign = {
        p.replace(str(tmp_path), "/home/author/data"): f"cap {i}" for i, p in enumerate(paths)
    }
    cap_file = tmp_path / "AIGIBench" / "train_text" / "train.json"
    cap_file.parent.mkdir()
    cap_file.write_text(json.dumps(foreign))
    for spec in (foreign, str(cap_file), cap_file, "auto"):
        ds = DetectionFolder(dataroot, captions=spec)
        assert [ds[i].caption for i in range(len(ds))] == [f"cap {i}" for i in range(4)]
    store = CaptionStore(foreign)
    assert DetectionFolder(dataroot, captions=store).caption(3) == "cap 3"


def test_missing_captions_raise_or_fall_back(detection_root):
    paths = DetectionFolder(detection_root).paths
    partial = {p: "a caption" for p in paths[:4]}
    with pytest.raises(CaptionError) as info:
        DetectionFolder(detection_root, captions=partial)
    assert "8 of 12 images have no caption" in str(info.value)
    assert len(info.value.missing) == 8
    with pytest.warns(CaptionFallbackWarning, match="8 of 12"):
        ds = DetectionFolder(detection_root, captions=partial, caption_fallback=True)
    caps = [ds.caption(i) for i in range(len(ds))]
    assert caps[:4] == ["a caption"] * 4
    assert caps[5] == "a photo of a car"  # category folder
    assert caps[10] == "a photo of an object"  # no category known
    # the fallback never depends on the label
    assert caps[8] == caps[9] == "a photo of a cat"


def test_fallback_without_caption_file(detection_root):
    with pytest.warns(CaptionFallbackWarning):
        ds = DetectionFolder(detection_root, caption_fallback=True)
    assert ds[0].caption == "a photo of an object"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DetectionFolder(detection_root)[0].caption is None


def test_captions_argument_errors(detection_root):
    with pytest.raises(TypeError, match="captions must be"):
        DetectionFolder(detection_root, captions=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        DetectionFolder(detection_root, captions=CaptionStore({}), caption_fallback=True)
    with pytest.raises(CaptionError, match="tried"):
        DetectionFolder(detection_root, captions="auto")


def test_relative_paths_are_listed_relative(files, tmp_path, monkeypatch):
    files.make_tree(tmp_path / "r", {"s/0_real": 1, "s/1_fake": 1})
    monkeypatch.chdir(tmp_path)
    ds = DetectionFolder(Path("r"))
    assert ds.paths[0] == os.path.join("r", "s", "0_real", "img000.png")
    assert ds[0].image.size == (8, 8)


def test_rootless_store_is_rebased_so_other_subsets_never_borrow(files, tmp_path):
    root = tmp_path / "test"
    files.make_tree(
        root,
        {
            "progan/car/0_real": 1,
            "progan/car/1_fake": 1,
            "stylegan/car/0_real": 1,
            "stylegan/car/1_fake": 1,
        },
    )
    progan = [p for p in DetectionFolder(root).paths if "/progan/" in p]
    cap_file = tmp_path / "caps.json"
    cap_file.write_text(json.dumps({p.replace(str(tmp_path), "/elsewhere"): "x" for p in progan}))
    store = load_captions(cap_file)  # no root: "car/0_real/img000.png" alone would match
    assert store.find(root / "stylegan/car/0_real/img000.png") == "x"
    with pytest.raises(CaptionError) as info:
        DetectionFolder(root, captions=store)
    assert len(info.value.missing) == 2
    assert all("/stylegan/" in p for p in info.value.missing)
    ds = DetectionFolder(root, captions=store, subsets=["progan"])
    assert ds.caption(0) == "x" and ds.caption_store.root is not None


def test_dataset_pickles_for_spawned_workers(detection_root):
    import pickle

    from dgsnet.data import PatchSelection, default_transform

    with pytest.warns(CaptionFallbackWarning):
        ds = DetectionFolder(detection_root, transform=default_transform(), caption_fallback=True)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.paths == ds.paths and clone[5].caption == "a photo of a car"
    assert clone[0].image.shape == (3, 224, 224)
    ds2 = DetectionFolder(detection_root, transform=PatchSelection(seed=1))
    assert pickle.loads(pickle.dumps(ds2))[0].image.shape == (3, 224, 224)
