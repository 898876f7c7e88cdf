"""Benchmark folder layouts for AI-generated-image detection, as PyTorch datasets.

Two layouts are read (`docs/datasets.md` has the tree diagrams):

- `DetectionFolder`: `<root>/<subset>[/<category>]/{0_real,1_fake}/...` as used by
  CNNDetection, UnivFD, AIGCDetectBenchmark, AIGIBench and NPR; `root` may also hold
  `0_real`/`1_fake` itself (one subset named after the folder).
- `GenImageFolder`: `<root>/<generator>[/<inner>]/{train,val}/{nature,ai}/...`.

Label 0 is real, 1 is fake. Files are listed in a sorted, deterministic order. An item is a
`Sample` `(image, caption, label, subset, index, path)`; `collate` batches them
for a `DataLoader`, keeping the dataset `index` (the key of teacher
feature caches) and the subset names.

The item types and `collate` live in `dgsnet.data.samples`, the folder walking and
`detect_layout` in `dgsnet.data.layouts`; both are re-exported here.

Examples:
    >>> ds = DetectionFolder("datasets/test", transform=preprocess)        # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=32, collate_fn=collate)          # doctest: +SKIP
    >>> for name, part in ds.by_subset().items(): evaluate(name, part)      # doctest: +SKIP
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import CorruptImageError, DatasetError, ImageRangeWarning
from ..progress import progress_bar
from ._common import (
    IMAGE_EXTENSIONS,
    check_image,
    load_image,
    truncated_images_allowed,
)
from .caption_store import CaptionStore, FallbackSpec, load_captions
from .layouts import (
    FAKE_DIR,
    GENIMAGE_FAKE_DIR,
    GENIMAGE_REAL_DIR,
    GENIMAGE_SPLITS,
    REAL_DIR,
    ImageRecord,
    check_root,
    collect_records,
    detect_layout,
    detection_leaves,
    filter_subsets,
    genimage_leaves,
    layout_hint,
    list_images,
)
from .samples import Batch, Sample, collate

__all__ = [
    "IMAGE_EXTENSIONS",
    "REAL_DIR",
    "FAKE_DIR",
    "DatasetError",
    "CorruptImageError",
    "ImageRangeWarning",
    "Sample",
    "Batch",
    "collate",
    "LabeledImageDataset",
    "DetectionFolder",
    "GenImageFolder",
    "ClassFolder",
    "detect_layout",
    "open_dataset",
    "list_images",
]

_MAX_LISTED = 5

CaptionsArg = CaptionStore | Mapping[str, str] | str | os.PathLike[str] | None


# --------------------------------------------------------------------------------------------
# base dataset


class LabeledImageDataset(Dataset):
    """Base of `DetectionFolder` and `GenImageFolder`: a list of (path, label,
    subset, category) records with loading, captions, per-subset views and verification.

    Attributes `paths`, `labels`, `subset_names` and `categories` are per-item lists
    in dataset order.

    Args:
        records: one record per item.
        root: the dataset folder.
        transform: applied to the RGB PIL image; `None` returns the image.
        captions: as for `DetectionFolder`.
        caption_fallback: see `CaptionStore`.
        verify: decode every image at construction and raise listing all bad files.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        root: Path,
        transform: Callable[[Image.Image], Any] | None = None,
        captions: CaptionsArg = None,
        *,
        caption_fallback: FallbackSpec = None,
        verify: bool = False,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.root = root
        """The dataset folder."""
        self.transform = transform
        """The transform applied to every image (`None`: items hold PIL images)."""
        self._records = list(records)
        self.paths: list[str] = [r.path for r in self._records]
        """Every image path, in dataset order (sorted by path components)."""
        self.labels: list[int] = [r.label for r in self._records]
        """The label of every image: 0 real, 1 fake."""
        self.subset_names: list[str] = [r.subset for r in self._records]
        """The subset (generator) of every image: its top-level folder name."""
        self.categories: list[str | None] = [r.category for r in self._records]
        """The object category of every image (ProGAN-style category folders), else `None`."""
        self.caption_store = self._make_store(captions, caption_fallback)
        """The captions of the images, or `None` when the dataset has none."""
        self._captions: list[str] | None = None
        if self.caption_store is not None:
            self._captions = self.caption_store.captions_for(self.paths, self.categories)
        if truncated_images_allowed():
            warnings.warn(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is switched on (not by dgsnet): truncated "
                "images will load without an error, their missing part grey",
                stacklevel=3,
            )
        if verify:
            self.verify()

    def _make_store(self, captions: CaptionsArg, fallback: FallbackSpec) -> CaptionStore | None:
        if captions is None:
            if fallback not in (None, False):
                return CaptionStore({}, root=self.root, fallback=fallback)
            return None
        if isinstance(captions, CaptionStore):
            if fallback not in (None, False):
                raise ValueError(
                    "caption_fallback is given twice: set it on the CaptionStore or here"
                )
            return captions if captions.root is not None else captions.with_root(self.root)
        if isinstance(captions, (str, os.PathLike)):
            src = self.root if os.fspath(captions) == "auto" else captions
            return load_captions(src, root=self.root, fallback=fallback)
        if isinstance(captions, Mapping):
            return CaptionStore(captions, root=self.root, fallback=fallback)
        raise TypeError(
            "captions must be None, a CaptionStore, a mapping path -> caption, a caption JSON "
            f"file or 'auto', got {type(captions).__name__}"
        )

    # -- items --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def _index(self, index: int) -> int:
        i = operator.index(index)
        n = len(self._records)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return i

    def load(self, index: int) -> Image.Image:
        """The untransformed 8-bit RGB image at `index` (16-bit, integer and float files
        mapped by the rule in `docs/datasets.md`, "Pixel formats"); `CorruptImageError`
        names the file when it cannot be decoded or mapped.

        Args:
            index: the item.

        Returns:
            The image.

        Raises:
            CorruptImageError: the file cannot be decoded or mapped.
        """
        return load_image(self._records[self._index(index)].path)

    def caption(self, index: int) -> str | None:
        """The caption of item `index` (`None` without captions).

        Args:
            index: the item.

        Returns:
            The caption, or `None`.
        """
        i = self._index(index)
        return None if self._captions is None else self._captions[i]

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        rec = self._records[i]
        image: Any = load_image(rec.path)
        if self.transform is not None:
            image = self.transform(image)
        caption = None if self._captions is None else self._captions[i]
        return Sample(image, caption, rec.label, rec.subset, i, rec.path)

    # -- subsets ------------------------------------------------------------------------------
    def subsets(self) -> list[str]:
        """Subset names in dataset order (sorted)."""
        return list(dict.fromkeys(self.subset_names))

    def subset_indices(self) -> dict[str, list[int]]:
        """`{subset: [dataset indices]}`."""
        out: dict[str, list[int]] = {name: [] for name in self.subsets()}
        for i, s in enumerate(self.subset_names):
            out[s].append(i)
        return out

    def by_subset(self) -> dict[str, Subset]:
        """`{subset: torch.utils.data.Subset}` for per-subset evaluation; items keep their
        global `index`."""
        return {name: Subset(self, idx) for name, idx in self.subset_indices().items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """`{subset: {"real": n, "fake": n}}`."""
        out = {name: {"real": 0, "fake": 0} for name in self.subsets()}
        for s, y in zip(self.subset_names, self.labels, strict=True):
            out[s]["fake" if y else "real"] += 1
        return out

    # -- verification -------------------------------------------------------------------------
    def verify(
        self, num_workers: int = 0, raise_error: bool = True, progress: bool = False
    ) -> list[tuple[str, str]]:
        """Decode every image once; return `[(path, reason)]` for the bad ones.

        With `raise_error=True` (default) any bad file raises one `DatasetError`
        listing *all* of them. `num_workers > 0` checks files in that many threads.

        Args:
            num_workers: threads that check files (`0`: this thread).
            raise_error: raise instead of returning the bad files.
            progress: show a progress bar.

        Returns:
            `[(path, reason)]` of the files that failed, empty when all decode.

        Raises:
            DatasetError: with `raise_error=True`, some files failed.
        """
        paths = self.paths
        if num_workers > 0:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                reasons: Iterable[str | None] = pool.map(check_image, paths, chunksize=64)
                reasons = list(_maybe_progress(reasons, progress, len(paths)))
        else:
            reasons = [check_image(p) for p in _maybe_progress(paths, progress, len(paths))]
        bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
        if bad and raise_error:
            lines = "\n  ".join(f"{p}: {r}" for p, r in bad)
            raise DatasetError(
                f"{len(bad)} of {len(paths)} images under {self.root} cannot be read:\n  {lines}"
            )
        return bad

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}: {v['real']} real / {v['fake']} fake" for k, v in list(self.counts().items())[:8]
        )
        more = ", ..." if len(self.subsets()) > 8 else ""
        return (
            f"{type(self).__name__}(root={os.fspath(self.root)!r}, {len(self)} images, "
            f"{len(self.subsets())} subsets [{parts}{more}])"
        )


def _maybe_progress(it: Iterable[Any], enabled: bool, total: int) -> Iterable[Any]:
    return progress_bar(it, total=total, unit="img", desc="verifying", enabled=enabled)


class DetectionFolder(LabeledImageDataset):
    """The `{0_real,1_fake}` layout of CNNDetection, UnivFD, AIGCDetectBenchmark, AIGIBench
    and NPR:

    ```text
    root/<subset>/0_real/*.png             root/<subset>/<category>/0_real/*.png
    root/<subset>/1_fake/*.png     or      root/<subset>/<category>/1_fake/*.png
    ```

    or `root/{0_real,1_fake}` directly (one subset named after `root`). Categories (e.g.
    ProGAN's `airplane`, `car`...) are merged into their subset and kept in
    `categories`. Folders that hold neither form are ignored (listed in
    `ignored_dirs`, e.g. a `train_text` caption folder). Class folders are read
    recursively.

    Args:
        root: the dataset folder.
        transform: applied to the RGB PIL image (e.g. an open_clip `preprocess`,
            `PatchSelection`); `None` returns the PIL image.
        captions: `None`; a `CaptionStore` (one without a root is
            rebased on `root`); a mapping path -> caption; a caption JSON file; or `"auto"`
            to locate `<split>_text/<split>.json` with
            `find_caption_file`. All captions are resolved at construction:
            missing ones raise `CaptionError` listing a few.
        subsets: only these subsets (unknown names raise).
        allow_single_class: accept a subset with only `0_real` or only `1_fake` (or an
            empty one of the two).
        caption_fallback: see `CaptionStore` (`True`: neutral template
            captions with a warning).
        verify: decode every image at construction and raise listing all bad files.

    Raises:
        DatasetError: root missing; no class folders; a subset without one class folder; a
            class folder with no images; unknown subset names; (with `verify`) bad images.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        captions: CaptionsArg = None,
        subsets: Iterable[str] | None = None,
        *,
        allow_single_class: bool = False,
        caption_fallback: FallbackSpec = None,
        verify: bool = False,
    ) -> None:
        root_p = check_root(root)
        leaves, ignored = detection_leaves(root_p)
        if not leaves:
            raise DatasetError(
                f"no {REAL_DIR}/{FAKE_DIR} folders under {root_p} (looked in root, "
                f"root/<subset> and root/<subset>/<category>)" + layout_hint(root_p, "genimage")
            )
        self.ignored_dirs: list[Path] = ignored
        """Folders under the root that hold neither class folder, so were not read."""
        leaves = filter_subsets(leaves, subsets, root_p)
        records = collect_records(
            leaves, ((REAL_DIR, 0), (FAKE_DIR, 1)), allow_single_class, keep_category=True
        )
        super().__init__(
            records,
            root_p,
            transform,
            captions,
            caption_fallback=caption_fallback,
            verify=verify,
        )


class GenImageFolder(LabeledImageDataset):
    """The GenImage layout, one subset per generator:

    ```text
    root/<generator>/<split>/nature/*.JPEG      (real, label 0)
    root/<generator>/<split>/ai/*.png           (fake, label 1)
    ```

    as well as the distributed form with one extra folder per generator
    (`root/<generator>/<inner>/<split>/...`, e.g. `ADM/imagenet_ai_0508_adm/val/ai`) and a
    `root` that is a single generator (`root/<split>/{nature,ai}`; a single generator
    folder that still holds its inner folder is read with the inner folder as subset name,
    since `root/X/<split>` cannot tell a generator `X` from an inner folder). `split` is
    `"train"` or `"val"`. Other arguments as `DetectionFolder`; the category
    recorded for captions is `None` (the inner folder name is not an object class).

    Args:
        root: the dataset folder.
        split: `"train"` or `"val"`.
        transform: as for `DetectionFolder`.
        captions: as for `DetectionFolder`.
        subsets: only these generators (unknown names raise).
        allow_single_class: as for `DetectionFolder`.
        caption_fallback: as for `DetectionFolder`.
        verify: as for `DetectionFolder`.

    Raises:
        DatasetError: as for `DetectionFolder`.
        ValueError: `split` is not `"train"` or `"val"`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "val"] = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        captions: CaptionsArg = None,
        subsets: Iterable[str] | None = None,
        *,
        allow_single_class: bool = False,
        caption_fallback: FallbackSpec = None,
        verify: bool = False,
    ) -> None:
        if split not in GENIMAGE_SPLITS:
            raise ValueError(f"split must be one of {GENIMAGE_SPLITS}, got {split!r}")
        root_p = check_root(root)
        leaves = genimage_leaves(root_p, split)
        if not leaves:
            raise DatasetError(
                f"no GenImage '{split}' folders under {root_p} (expected "
                f"<generator>[/<inner>]/{split}/{{{GENIMAGE_REAL_DIR},{GENIMAGE_FAKE_DIR}}})"
                + layout_hint(root_p, "detection")
            )
        self.split = split
        """The GenImage split read: `"train"` or `"val"`."""
        leaves = filter_subsets(leaves, subsets, root_p)
        records = collect_records(
            leaves,
            ((GENIMAGE_REAL_DIR, 0), (GENIMAGE_FAKE_DIR, 1)),
            allow_single_class,
            keep_category=False,
        )
        super().__init__(
            records,
            root_p,
            transform,
            captions,
            caption_fallback=caption_fallback,
            verify=verify,
        )


class ClassFolder(LabeledImageDataset):
    """The class-folder layout of image classification (as torchvision's `ImageFolder`):

    ```text
    root/<class>/**/*.png
    ```

    The label of an image is the position of its class in `classes`: by default the
    sub-folders of `root` that hold images, sorted by name, so the same folder names give
    the same labels on every split. The subset of an image is its class name, so
    `by_subset` gives one view per class. For tasks other than real/fake detection (with
    `DGSConfig(num_classes=len(classes))`).

    Args:
        root: the dataset folder.
        transform: as for `DetectionFolder`.
        captions: as for `DetectionFolder` (e.g. a mapping path -> class-name prompt).
        classes: the class folder names in label order (default: every sub-folder with
            images, sorted); a listed folder that is missing or empty is an error.
        caption_fallback: as for `DetectionFolder`.
        verify: as for `DetectionFolder`.

    Raises:
        DatasetError: root missing; no sub-folder with images; a listed class folder
            missing or empty; (with `verify`) bad images.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("dog", "cat"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / name / "1.png")
        >>> ds = ClassFolder(root)
        >>> ds.classes, ds.labels
        (['cat', 'dog'], [0, 1])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        captions: CaptionsArg = None,
        classes: Sequence[str] | None = None,
        *,
        caption_fallback: FallbackSpec = None,
        verify: bool = False,
    ) -> None:
        root_p = check_root(root)
        found = {
            d.name: list_images(d)
            for d in sorted(root_p.iterdir())
            if d.is_dir() and not d.name.startswith(".")
        }
        if classes is None:
            names = [name for name, files in found.items() if files]
            if not names:
                raise DatasetError(f"no class folder with images under {root_p}")
        else:
            names = [str(c) for c in classes]
            if len(set(names)) != len(names) or not names:
                raise DatasetError(f"classes must be distinct folder names, got {names}")
            bad = [n for n in names if not found.get(n)]
            if bad:
                raise DatasetError(
                    f"class folders missing or without images under {root_p}: {', '.join(bad)}"
                )
        self.classes: list[str] = names
        """The class names in label order: class `k` is `classes[k]`."""
        self.ignored_dirs: list[Path] = [root_p / n for n in found if n not in names]
        """Sub-folders of the root that are not classes (no images, or not listed)."""
        records = [
            ImageRecord(path, label, name, None)
            for label, name in enumerate(names)
            for path in found[name]
        ]
        super().__init__(
            records,
            root_p,
            transform,
            captions,
            caption_fallback=caption_fallback,
            verify=verify,
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """`{class: {"images": n}}`."""
        return {name: {"images": len(idx)} for name, idx in self.subset_indices().items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {v['images']}" for k, v in list(self.counts().items())[:8])
        more = ", ..." if len(self.classes) > 8 else ""
        return (
            f"ClassFolder(root={os.fspath(self.root)!r}, {len(self)} images, "
            f"{len(self.classes)} classes [{shown}{more}])"
        )


def open_dataset(
    root: str | os.PathLike[str], split: Literal["train", "val"] = "val", **kwargs: Any
) -> LabeledImageDataset:
    """Open `root` with `DetectionFolder` or `GenImageFolder` according to
    `detect_layout`; `split` is used for GenImage only, `kwargs` go to the class.

    Args:
        root: the dataset folder.
        split: the GenImage split (`"train"` or `"val"`).
        **kwargs: passed to the dataset class.

    Returns:
        The dataset.

    Raises:
        DatasetError: as for `detect_layout` and the dataset class.
    """
    if detect_layout(root) == "genimage":
        return GenImageFolder(root, split=split, **kwargs)
    return DetectionFolder(root, **kwargs)
