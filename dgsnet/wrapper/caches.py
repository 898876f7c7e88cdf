"""The two exact caches of `DGSWrapper`: teacher outputs and text features.

Both only ever return what was computed before for the same key, so they change the cost of a
step, never its result (`docs/performance.md`).

* `TeacherCache` keeps one row per dataset index (the teacher head's logits for that
  image), on the CPU. It is valid only while an index always maps to the same preprocessed
  image. `TeacherCache.export` and `TeacherCache.restore` move it in and out of a
  training checkpoint.
* `TextCache` keeps the frozen text tower's feature for each caption string, least
  recently used first out, up to `capacity` captions.

Examples:
    >>> import torch
    >>> cache = TeacherCache()
    >>> cache.store(torch.tensor([3, 5]), torch.ones(2, 1))
    >>> len(cache), cache.lookup(torch.tensor([5, 3])).shape
    (2, torch.Size([2, 1]))
    >>> cache.lookup(torch.tensor([4])) is None
    True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["MAX_INDEX", "TeacherCache", "TextCache"]

MAX_INDEX = 2**31
"""Dataset indices key a dense table; an index at or above this is not a dataset position."""


class TeacherCache:
    """Rows keyed by a non-negative integer dataset index, kept on the CPU.

    The table is dense (position `i` holds index `i`) and grows on demand, at least
    doubling, so storing `K` indices costs amortised `O(K)`.
    """

    def __init__(self) -> None:
        self._data: Tensor | None = None
        self._filled = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        """The number of indices that hold a row."""
        return int(self._filled.sum())

    def clear(self) -> None:
        """Forget every row."""
        self._data = None
        self._filled = torch.zeros(0, dtype=torch.bool)

    def lookup(self, index: Tensor) -> Tensor | None:
        """The rows for `index` (a 1-d integer tensor), if every one is cached.

        Args:
            index: dataset indices, any device.

        Returns:
            A CPU tensor `(len(index), ...)`, or `None` when any index has no row.
        """
        if self._data is None or index.numel() == 0:
            return None
        idx = index.cpu()
        if int(idx.max()) >= self._filled.numel() or not bool(self._filled[idx].all()):
            return None
        return self._data[idx]

    def store(self, index: Tensor, rows: Tensor) -> None:
        """Keep `rows[i]` for `index[i]` (detached, copied to the CPU).

        Rows of another shape or dtype than the cached ones replace the whole table.

        Args:
            index: `K` non-negative dataset indices below `MAX_INDEX`.
            rows: a tensor `(K, ...)`.

        Raises:
            ValueError: `index` and `rows` disagree in length, or an index is out of range.
        """
        if index.dim() != 1 or rows.dim() < 1 or rows.shape[0] != index.shape[0]:
            raise ValueError(
                f"store needs index (K,) and rows (K, ...), got index {tuple(index.shape)} and "
                f"rows {tuple(rows.shape)}"
            )
        if index.numel() == 0:
            return
        idx = index.cpu().long()
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= MAX_INDEX:
            raise ValueError(f"indices must lie in [0, {MAX_INDEX}), got values in [{lo}, {hi}]")
        rows = rows.detach().cpu()
        self._reserve(hi + 1, rows)
        assert self._data is not None
        self._data[idx] = rows
        self._filled[idx] = True

    def _reserve(self, need: int, rows: Tensor) -> None:
        """Make room for indices below `need`, with a table fit for `rows`."""
        data = self._data
        if data is None or data.shape[1:] != rows.shape[1:] or data.dtype != rows.dtype:
            self._data = rows.new_zeros((max(need, 1024), *rows.shape[1:]))
            self._filled = torch.zeros(self._data.shape[0], dtype=torch.bool)
        elif need > data.shape[0]:
            size = max(need, 2 * data.shape[0])
            grown = rows.new_zeros((size, *rows.shape[1:]))
            grown[: data.shape[0]] = data
            filled = torch.zeros(size, dtype=torch.bool)
            filled[: self._filled.numel()] = self._filled
            self._data, self._filled = grown, filled

    def export(self) -> dict[str, Tensor]:
        """Everything cached, for a checkpoint.

        Returns:
            `{"index": int64 (K,), "rows": (K, ...)}` with the indices ascending; `K = 0`
            (and `rows` of shape `(0,)`) when the cache is empty.
        """
        idx = self._filled.nonzero().flatten()
        if self._data is None or idx.numel() == 0:
            return {"index": torch.zeros(0, dtype=torch.long), "rows": torch.zeros(0)}
        return {"index": idx.long(), "rows": self._data[idx]}

    def restore(self, tensors: Mapping[str, Tensor]) -> None:
        """Replace the cache's content with what `export` returned.

        Args:
            tensors: a mapping with `"index"` (`K` integers) and `"rows"` (`(K, ...)`).

        Raises:
            ValueError: a key is missing, or the two tensors do not fit together.
        """
        missing = [k for k in ("index", "rows") if k not in tensors]
        if missing:
            raise ValueError(
                f"a teacher cache export needs 'index' and 'rows', missing {missing} "
                f"(got keys {sorted(tensors)})"
            )
        index, rows = tensors["index"], tensors["rows"]
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"teacher cache 'index' must hold integers, got dtype {index.dtype}")
        self.clear()
        if index.numel():
            self.store(index, rows)


class TextCache:
    """Text features by caption string, least recently used evicted first.

    Args:
        capacity: the most captions kept; 0 keeps none.
    """

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[str, Tensor] = OrderedDict()
        self._capacity = 0
        self.capacity = capacity

    @property
    def capacity(self) -> int:
        """The most captions kept; lowering it evicts the oldest at once."""
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"capacity must be an int >= 0, got {value!r}")
        self._capacity = value
        self._trim()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, caption: object) -> bool:
        return caption in self._entries

    def clear(self) -> None:
        """Forget every caption."""
        self._entries.clear()

    def features(self, captions: Sequence[str], encode: Callable[[list[str]], Tensor]) -> Tensor:
        """The feature of each caption, encoding only those not cached (each once).

        Args:
            captions: the captions, repeats allowed.
            encode: maps a list of `U` captions to their features `(U, D)`.

        Returns:
            A tensor `(len(captions), D)` on the device of the cached rows (the device
            `encode` returns). With `capacity == 0` this is `encode(captions)` itself.
        """
        if self._capacity == 0:
            return encode(list(captions))
        entries = self._entries
        missing = list(dict.fromkeys(c for c in captions if c not in entries))
        if missing:
            for caption, feat in zip(missing, encode(missing), strict=True):
                entries[caption] = feat.detach().clone()
        rows = []
        for caption in captions:
            entries.move_to_end(caption)
            rows.append(entries[caption])
        self._trim()
        return torch.stack(rows)

    def _trim(self) -> None:
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
