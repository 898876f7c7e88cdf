"""Walking the benchmark folder layouts: the class-folder names, image listing, and telling
the detection layout (`{0_real,1_fake}`) from the GenImage one (`{train,val}/{nature,ai}`).

The dataset classes of `dgsnet.data.datasets` build their item records with the helpers
here; `detect_layout` and `list_images` are public.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import DatasetError
from ._common import IMAGE_EXTENSIONS, is_image_file

__all__ = [
    "REAL_DIR",
    "FAKE_DIR",
    "GENIMAGE_REAL_DIR",
    "GENIMAGE_FAKE_DIR",
    "GENIMAGE_SPLITS",
    "list_images",
    "detect_layout",
]

REAL_DIR = "0_real"
"""The class folder of real images (label 0) in the detection layout."""
FAKE_DIR = "1_fake"
"""The class folder of generated images (label 1) in the detection layout."""
GENIMAGE_REAL_DIR = "nature"
"""The class folder of real images (label 0) in GenImage's layout."""
GENIMAGE_FAKE_DIR = "ai"
"""The class folder of generated images (label 1) in GenImage's layout."""
GENIMAGE_SPLITS = ("train", "val")
"""The split folders of GenImage's layout (`<generator>/<split>/{nature,ai}`)."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: int
    subset: str
    category: str | None


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """All image files under `folder` (recursively), sorted by their path components.

    Image = one of `IMAGE_EXTENSIONS` in any case, not hidden. Symlinked files are
    followed, symlinked sub-folders are not (no cycles).

    Args:
        folder: the folder to search.

    Returns:
        The image paths, as strings.
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return sorted(out, key=lambda p: Path(p).parts)


def _subdirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list folder {folder}: {exc}") from exc
    return [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir()]


def check_root(root: str | os.PathLike[str]) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    p = Path(root)
    if not p.exists():
        raise DatasetError(f"dataset root {p} does not exist")
    if not p.is_dir():
        raise DatasetError(f"dataset root {p} is not a folder")
    return p


def _folder_name(p: Path) -> str:
    return Path(os.path.abspath(p)).name


def filter_subsets(
    leaves: list[tuple[str, str | None, Path]], subsets: Iterable[str] | None, root: Path
) -> list[tuple[str, str | None, Path]]:
    if subsets is None:
        return leaves
    if isinstance(subsets, str):
        subsets = [subsets]
    wanted = list(dict.fromkeys(subsets))
    available = list(dict.fromkeys(name for name, _, _ in leaves))
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise DatasetError(f"subsets {unknown} not found under {root}; available: {available}")
    return [leaf for leaf in leaves if leaf[0] in wanted]


def collect_records(
    leaves: list[tuple[str, str | None, Path]],
    class_dirs: tuple[tuple[str, int], ...],
    allow_single_class: bool,
    keep_category: bool,
) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    for subset, category, folder in leaves:
        where = f"subset {subset!r}" + (f" (folder {category!r})" if category else "")
        leaf_records: list[ImageRecord] = []
        for dirname, label in class_dirs:
            cdir = folder / dirname
            if not cdir.is_dir():
                if not allow_single_class:
                    present = [d for d, _ in class_dirs if (folder / d).is_dir()]
                    raise DatasetError(
                        f"{where} has no {dirname!r} folder (expected {cdir}; found "
                        f"{present}); pass allow_single_class=True for a test set that "
                        "legitimately holds one class"
                    )
                continue
            files = list_images(cdir)
            if not files and not allow_single_class:
                raise DatasetError(
                    f"folder {cdir} contains no images (extensions: "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
                )
            cat = category if keep_category else None
            leaf_records.extend(ImageRecord(f, label, subset, cat) for f in files)
        if not leaf_records:
            raise DatasetError(
                f"{where} contains no images: every class folder under {folder} is empty"
            )
        records.extend(leaf_records)
    return records


# --------------------------------------------------------------------------------------------
# detection layout


def _has_detection_classes(d: Path) -> bool:
    return (d / REAL_DIR).is_dir() or (d / FAKE_DIR).is_dir()


def detection_leaves(root: Path) -> tuple[list[tuple[str, str | None, Path]], list[Path]]:
    """(subset, category, folder holding the class dirs) in sorted order, and ignored dirs."""
    if _has_detection_classes(root):
        return [(_folder_name(root), None, root)], []
    leaves: list[tuple[str, str | None, Path]] = []
    ignored: list[Path] = []
    for sub in _subdirs(root):
        if _has_detection_classes(sub):
            leaves.append((sub.name, None, sub))
            continue
        cats = [c for c in _subdirs(sub) if _has_detection_classes(c)]
        if cats:
            leaves.extend((sub.name, c.name, c) for c in cats)
        else:
            ignored.append(sub)
    return leaves, ignored


# --------------------------------------------------------------------------------------------
# GenImage layout


def _has_genimage_classes(d: Path) -> bool:
    return (d / GENIMAGE_REAL_DIR).is_dir() or (d / GENIMAGE_FAKE_DIR).is_dir()


def _genimage_split_dirs(gen: Path, split: str) -> list[tuple[str | None, Path]]:
    """Split folders of one generator: `gen/<split>` or `gen/<inner>/<split>`."""
    if _has_genimage_classes(gen / split):
        return [(None, gen / split)]
    return [
        (inner.name, inner / split)
        for inner in _subdirs(gen)
        if _has_genimage_classes(inner / split)
    ]


def genimage_leaves(root: Path, split: str) -> list[tuple[str, str | None, Path]]:
    own = _genimage_split_dirs(root, split)
    if own and own[0][0] is None:
        return [(_folder_name(root), None, own[0][1])]
    leaves = []
    for gen in _subdirs(root):
        for inner, d in _genimage_split_dirs(gen, split):
            leaves.append((gen.name, inner, d))
    return leaves


# --------------------------------------------------------------------------------------------
# layout detection


def _find_dirs(root: Path, depth: int, test: Callable[[Path], bool]) -> bool:
    """Whether `test` holds for `root` or a folder at most `depth` levels below it."""
    frontier = [root]
    for level in range(depth + 1):
        if any(test(d) for d in frontier):
            return True
        if level < depth:
            frontier = [c for d in frontier for c in _subdirs(d)]
    return False


def _is_detection(root: Path) -> bool:
    return _find_dirs(root, 2, _has_detection_classes)


def _is_genimage(root: Path) -> bool:
    def split_dir(d: Path) -> bool:
        return any(_has_genimage_classes(d / s) for s in GENIMAGE_SPLITS)

    return _find_dirs(root, 2, split_dir)


def layout_hint(root: Path, other: Literal["detection", "genimage"]) -> str:
    """A hint when `root` holds the *other* layout."""
    try:
        if other == "genimage" and _is_genimage(root):
            return "; it looks like a GenImage folder: use GenImageFolder"
        if other == "detection" and _is_detection(root):
            return f"; it holds {REAL_DIR}/{FAKE_DIR} folders: use DetectionFolder"
    except DatasetError:
        pass
    return ""


def detect_layout(root: str | os.PathLike[str]) -> Literal["detection", "genimage"]:
    """Tell which layout `root` holds.

    `"detection"`: `{0_real,1_fake}` folders in `root`, `root/*` or `root/*/*`;
    `"genimage"`: `{train,val}/{nature,ai}` in `root`, `root/*` or `root/*/*`.
    Raises `DatasetError` when `root` is missing, holds neither, or holds both.

    Args:
        root: the dataset folder.

    Returns:
        `"detection"` or `"genimage"`.

    Raises:
        DatasetError: `root` is missing, holds neither layout, or holds both.
    """
    root_p = check_root(root)
    det, gen = _is_detection(root_p), _is_genimage(root_p)
    if det and gen:
        raise DatasetError(
            f"{root_p} holds both {REAL_DIR}/{FAKE_DIR} and GenImage nature/ai folders; "
            "open it with DetectionFolder or GenImageFolder explicitly"
        )
    if det:
        return "detection"
    if gen:
        return "genimage"
    raise DatasetError(
        f"{root_p} is neither dataset layout:\n"
        f"  detection: <root>/<subset>[/<category>]/{{{REAL_DIR},{FAKE_DIR}}}/<images>\n"
        f"  GenImage:  <root>/<generator>[/<inner>]/{{train,val}}/"
        f"{{{GENIMAGE_REAL_DIR},{GENIMAGE_FAKE_DIR}}}/<images>"
    )
