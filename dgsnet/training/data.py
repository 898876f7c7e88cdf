"""Training data plumbing: datasets seen as one indexed set, the resumable sampler, the data
fingerprint a resumed run checks, loaders, and the caption-feature table."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import TrainingConfigError, TrainingInterrupted
from ..wrapper import DGSWrapper
from .seeding import derive_seed
from .workers import bounded_workers

__all__ = [
    "ResumableSampler",
    "Stage1Batches",
    "TrainItems",
    "caption_table",
    "dataset_fingerprint",
    "iterate_loader",
    "make_loader",
    "open_datasets",
]


def open_datasets(
    roots: Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Any] | None,
    *,
    captions: Any = None,
    caption_fallback: Any = None,
    subsets: Sequence[str] | None = None,
    split: str = "train",
    allow_single_class: bool = False,
) -> list[Any]:
    """Open each root with `dgsnet.data.open_dataset` (detection or GenImage layout).

    `captions`: `None`, `"auto"` (`<split>_text/<split>.json` beside each root), one
    caption file / mapping for every root, or a list with one entry per root."""
    from ..data import open_dataset

    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise TrainingConfigError("no dataset root given")
    if isinstance(captions, (list, tuple)):
        if len(captions) not in (1, len(roots)):
            raise TrainingConfigError(
                f"got {len(captions)} caption files for {len(roots)} roots: give one for all "
                "or one per root"
            )
        per_root = list(captions) * (len(roots) if len(captions) == 1 else 1)
    else:
        per_root = [captions] * len(roots)
    out = []
    for root, cap in zip(roots, per_root, strict=True):
        kwargs: dict[str, Any] = {
            "transform": transform,
            "captions": cap,
            "allow_single_class": allow_single_class,
        }
        if caption_fallback not in (None, False):
            kwargs["caption_fallback"] = caption_fallback
        if subsets:
            kwargs["subsets"] = list(subsets)
        kwargs["split"] = split  # open_dataset checks it
        out.append(open_dataset(root, **kwargs))
    return out


class TrainItems(Dataset):
    """Several datasets of `dgsnet.data.Sample` items seen as one, with global indices
    (the teacher-cache key) and seeded augmentation.

    Item `i` of "epoch" `tag` (`set_epoch`) is produced under torch's RNG seeded
    with `(seed, tag, i)` and the caller's RNG state is restored afterwards, so a random
    flip or patch shuffle depends only on the seed, the epoch and the item, not on worker
    processes, ranks or where a resumed run started.
    """

    def __init__(self, datasets: Dataset | Sequence[Dataset], seed: int = 0) -> None:
        if isinstance(datasets, Dataset) and not isinstance(datasets, (list, tuple)):
            datasets = [datasets]
        self.datasets: list[Any] = list(datasets)
        if not self.datasets:
            raise TrainingConfigError("no training data")
        sizes = np.asarray([0] + [len(d) for d in self.datasets], dtype=np.int64)
        self.offsets: list[int] = np.cumsum(sizes).tolist()
        if self.offsets[-1] == 0:
            raise TrainingConfigError("the training data holds no images")
        self.seed = int(seed)
        self.tag: Any = "init"

    def set_epoch(self, tag: Any) -> None:
        self.tag = tag

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.datasets[k], index - int(self.offsets[k])

    def __getitem__(self, index: int) -> Any:
        from ..data import Sample
        from ..errors import CorruptImageError, DatasetError

        ds, local = self.locate(int(index))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "item", self.tag, int(index)))
            try:
                item = ds[local]
            except CorruptImageError as exc:
                # a one-argument error type survives the trip out of a DataLoader worker
                raise DatasetError(str(exc)) from exc
        if not isinstance(item, Sample):
            item = Sample(*item)
        return item._replace(index=int(index))


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation, sharded like `DistributedSampler`
    (padded to a multiple of `world_size`, rank `r` takes every `world_size`-th item
    from `r`), that can start part-way into an epoch (`set_start`).

    The permutation of epoch `e` comes from a generator seeded with
    `permutation_seed` `(seed, e)`: a resumed run sees exactly the same batches."""

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if n < 1:
            raise ValueError("ResumableSampler needs at least one item")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip this rank's first `start` items of the epoch."""
        self.start = int(start)

    def permutation_seed(self, epoch: int | None = None) -> int:
        return derive_seed(self.seed, "perm", self.epoch if epoch is None else epoch)

    @property
    def per_rank(self) -> int:
        return self.n if self.world_size == 1 else math.ceil(self.n / self.world_size)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.permutation_seed())
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            total = self.per_rank * self.world_size
            while len(order) < total:
                order += order[: total - len(order)]
            order = order[self.rank : total : self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def dataset_fingerprint(datasets: Sequence[Any]) -> dict[str, Any]:
    """A sha256 over every image's path (relative to its dataset root), label, file size and
    caption: a resumed run refuses to continue on different data."""
    h = hashlib.sha256()
    n = 0
    for ds in datasets:
        paths = getattr(ds, "paths", None)
        labels = getattr(ds, "labels", None)
        if paths is None or labels is None:
            h.update(f"opaque:{type(ds).__name__}:{len(ds)}\n".encode())
            n += len(ds)
            continue
        root = os.fspath(getattr(ds, "root", "") or "")
        cap = getattr(ds, "caption", None)
        for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
            rel = os.path.relpath(p, root) if root else p
            try:
                size = os.stat(p).st_size
            except OSError:
                size = -1
            c = cap(i) if callable(cap) else None
            # surrogatepass: a file name that is not UTF-8 (os.fsdecode spells its bytes as
            # lone surrogates) hashes as its own bytes instead of failing
            h.update(f"{rel}\t{int(y)}\t{size}\t{c}\n".encode("utf-8", "surrogatepass"))
        n += len(paths)
    return {"sha256": h.hexdigest(), "num_images": n}


class Stage1Batches:
    """Re-iterable loader for `fit_teacher_head`: each pass is one epoch with its own
    permutation and augmentation seed; yields `(images, captions, labels, index | None)`."""

    def __init__(
        self,
        items: TrainItems,
        batch_size: int,
        seed: int,
        shuffle: bool,
        device: torch.device,
        pass_index: bool,
        num_workers: int,
        stop: Callable[[], bool],
    ) -> None:
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.sampler = ResumableSampler(
            len(items), seed=derive_seed(seed, "stage1"), shuffle=shuffle
        )
        self.device, self.pass_index, self.num_workers = device, pass_index, num_workers
        self.epoch = -1
        self.stop = stop

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, list[Any], Tensor, Tensor | None]]:
        from ..data import collate

        self.epoch += 1
        self.items.set_epoch(("stage1", self.epoch))
        self.sampler.set_epoch(self.epoch)
        loader = make_loader(
            self.items,
            self.sampler,
            self.batch_size,
            self.num_workers,
            derive_seed(self.seed, "loader1", self.epoch),
            self.device,
            collate,
        )
        for batch in iterate_loader(loader):
            if self.stop():
                raise TrainingInterrupted("interrupted during stage 1 (stage 1 restarts on resume)")
            index = batch.indices if self.pass_index else None
            images = batch.images.to(self.device, non_blocking=True)
            yield images, batch.captions, batch.labels, index


def iterate_loader(loader: DataLoader) -> Iterator[Any]:
    """Iterate `loader` and stop its worker processes as soon as the loop ends, also on an
    exception (left to the garbage collector, workers that raised linger for seconds)."""
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def make_loader(
    ds: Dataset,
    sampler: Sampler[int],
    batch_size: int,
    num_workers: int,
    seed: int,
    device: torch.device,
    collate_fn: Callable[..., Any],
) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=bounded_workers(num_workers, len(sampler), batch_size),  # type: ignore[arg-type]
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


def caption_table(wrapper: DGSWrapper, items: TrainItems) -> tuple[Tensor, Tensor] | None:
    """Text features of every caption of `items` computed once, in a fixed order and fixed
    chunks: `(features (U, D) on the CPU, row of each item (N,))`. Fixed chunks make the
    features independent of which batch first met a caption (the matmuls of a batch may round
    differently from those of another), which a resumed run needs to be bitwise exact.
    `None` when a dataset has no per-item captions."""
    captions: list[str] = []
    for ds in items.datasets:
        get = getattr(ds, "caption", None)
        if not callable(get):
            return None
        for i in range(len(ds)):
            c = get(i)
            if not isinstance(c, str):
                return None
            captions.append(c)
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    chunks = [  # use_cache=False: no LRU copy of what the table holds
        wrapper.encode_text(unique[i : i + 256], use_cache=False).detach().cpu()
        for i in range(0, len(unique), 256)
    ]
    return torch.cat(chunks), torch.tensor([row[c] for c in captions], dtype=torch.long)
