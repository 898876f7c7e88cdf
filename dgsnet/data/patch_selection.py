r"""DGS-Net's patch selection: score patches by spectral entropy, keep and tile the extremes.

`PatchSelection` reproduces the preprocessing of the DGS-Net paper (arXiv 2511.13108) as its
released code (HorizonTEL/DGS-Net) implements it: cut the image
into non-overlapping 32x32 patches, score each by spectral entropy, keep the 24 lowest and the
25 highest, shuffle the 49, tile them into a 7x7 grid (224x224), then (optionally) flip
horizontally and normalise with the ImageNet mean/std.

Spectral entropy of a patch (`spectral_entropy`), exactly as computed here:

$$
g = 0.299 R + 0.587 G + 0.114 B, \quad
F = \mathrm{FFT2}(g), \quad
P_{uv} = \frac{|F_{uv}|^2}{\sum_{u'v'} |F_{u'v'}|^2}, \quad
H = -\sum_{uv} P_{uv} \log_2 P_{uv}
$$

over all `p*p` frequencies (DC included), with $0 \log 0 = 0$ and $H = 0$ for an
all-black patch. This is the entropy of the normalised *power* spectrum, as the reference
code computes it; `spectrum="magnitude"` uses $|F|$ instead. A flat patch puts all its
energy in the DC term (`H = 0`); white noise spreads it evenly (`H` near
`log2(p*p) = 10` for 32x32).

Everything here is re-exported by `dgsnet.data.transforms` and `dgsnet.data`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "spectral_entropy",
    "PatchSelection",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet per-channel mean (RGB), the normalisation of DGS-Net's patch selection."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet per-channel standard deviation (RGB)."""

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_WORKER_SEED_STRIDE = 1_000_003


def _entropy_np(g: np.ndarray, spectrum: str) -> np.ndarray:
    mag = np.abs(np.fft.fft2(g.astype(np.float64, copy=False)))
    s = mag * mag if spectrum == "power" else mag
    total = s.sum(axis=(-2, -1), keepdims=True)
    p = s / np.where(total > 0, total, 1.0)  # an all-zero patch gives p = 0 everywhere, H = 0
    positive = p > 0
    plogp = np.where(positive, p * np.log2(np.where(positive, p, 1.0)), 0.0)
    return 0.0 - plogp.sum(axis=(-2, -1))  # 0.0 - x: no negative zero


def spectral_entropy(
    patches: Tensor | np.ndarray, spectrum: Literal["power", "magnitude"] = "power"
) -> Tensor | np.ndarray:
    r"""Spectral entropy (bits) of grayscale patches `(..., p, q)`, returned as `(...)`.

    $H = -\sum P \log_2 P$ with $P = S / \sum S$, $S = |FFT2(x)|^2$
    (`"power"`, the reference's choice) or $|FFT2(x)|$ (`"magnitude"`), over every
    frequency including DC. Invariant to scaling `x`; `0` for an all-zero patch. Computed
    in float64 with numpy (single-threaded: it runs in data-loading code, and is not
    differentiable); a tensor in gives a float64 tensor on the same device out.

    Args:
        patches: `(..., p, q)` grayscale patches, a tensor or a numpy array.
        spectrum: `"power"` or `"magnitude"`.

    Returns:
        The entropies, shape `(...)`, float64, of the input's kind (and device).

    Raises:
        ValueError: fewer than two dimensions, or an unknown `spectrum`.
        TypeError: neither a tensor nor a numpy array.

    Examples:
        >>> flat = torch.full((1, 8, 8), 0.5)
        >>> float(spectral_entropy(flat))
        0.0
    """
    if spectrum not in ("power", "magnitude"):
        raise ValueError(f"spectrum must be 'power' or 'magnitude', got {spectrum!r}")
    if isinstance(patches, Tensor):
        if patches.dim() < 2:
            raise ValueError(f"patches must have shape (..., p, q), got {tuple(patches.shape)}")
        out = _entropy_np(patches.detach().to("cpu", torch.float64).numpy(), spectrum)
        return torch.from_numpy(np.asarray(out)).to(patches.device)
    if isinstance(patches, np.ndarray):
        if patches.ndim < 2:
            raise ValueError(f"patches must have shape (..., p, q), got {patches.shape}")
        return _entropy_np(patches, spectrum)
    raise TypeError(f"patches must be a tensor or a numpy array, got {type(patches).__name__}")


def _gray_np(tiles: np.ndarray) -> np.ndarray:
    """`(..., 3, H, W)` -> `(..., H, W)` luma (ITU-R BT.601 weights), float64."""
    w0, w1, w2 = _GRAY_WEIGHTS
    return w0 * tiles[..., 0, :, :] + w1 * tiles[..., 1, :, :] + w2 * tiles[..., 2, :, :]


def _as_chw01(img: Any) -> np.ndarray:
    """PIL image, `(H, W[, C])` numpy array or `(C, H, W)`/`(H, W)` tensor -> float64
    `(3, H, W)` array in `[0, 1]` (uint8 is divided by 255; floats are taken as [0, 1])."""
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    elif isinstance(img, np.ndarray):
        arr = img[None] if img.ndim == 2 else img.transpose(2, 0, 1) if img.ndim == 3 else img
    elif isinstance(img, Tensor):
        t = img.detach().cpu()
        arr = (t[None] if t.dim() == 2 else t).numpy()
    else:
        raise TypeError(
            f"expected a PIL image, a numpy array or a tensor, got {type(img).__name__}"
        )
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or 0 in arr.shape:
        raise ValueError(
            "expected a non-empty image of shape (C, H, W) with C in (1, 3), got "
            f"{tuple(arr.shape)}"
        )
    if arr.dtype == np.uint8:
        x = arr.astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("expected finite pixel values, got NaN or Inf")
    else:
        raise TypeError(f"expected uint8 or floating pixels, got {arr.dtype}")
    return np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x


class PatchSelection:
    """DGS-Net's patch-selection preprocessing: image -> normalised `(3, 224, 224)` tensor.

    1. If the image has fewer than `n_low + n_high` whole patches it is scaled up (bicubic,
       aspect ratio kept) so that its shorter side is the output size (224); with
       `upscale=False` it raises instead. (The released code would tile duplicates and
       black gaps.)
    2. The image is cut into non-overlapping `patch_size` patches from the top-left corner
       (a right/bottom remainder is dropped), in raster order.
    3. Each patch is scored by `spectral_entropy` of its luma.
    4. The `n_low` lowest and `n_high` highest scores are kept (stable sort: ties go to the
       earlier patch).
    5. The kept patches are shuffled (`shuffle=True`) or left in raster order
       (`shuffle=False`) and tiled row-major into a `sqrt(n_low + n_high)` square grid.
    6. `flip=True` flips the result horizontally with probability 1/2 (training only).
    7. `normalize=True` subtracts `mean` and divides by `std` (ImageNet by default).

    Randomness (shuffle and flip):

    - `seed=None`: torch's global RNG (the DataLoader seeds it per worker);
    - `seed=s`: a private generator seeded with `s` (`s + 1000003 * (worker_id + 1)` in
      DataLoader worker `worker_id`), reproducible run to run;
    - `deterministic=True` (evaluation): a generator re-seeded with `seed` (0 if None) on
      every call, so every image gets the same patch order whatever the call order, batch or
      worker; incompatible with `flip=True`.

    Input: a PIL image (any mode), a `(H, W, C)` uint8 array or a `(C, H, W)` tensor
    (uint8, or float in `[0, 1]`). The tiles hold the exact input pixel values.

    Args:
        patch_size: patch side in pixels.
        n_low: how many lowest-entropy patches to keep.
        n_high: how many highest-entropy patches to keep; `n_low + n_high` must be a
            perfect square.
        shuffle: shuffle the kept patches before tiling.
        deterministic: re-seed on every call (evaluation); see above.
        seed: the seed of a private generator; `None` uses torch's global RNG.
        flip: random horizontal flip of the result (training).
        normalize: subtract `mean` and divide by `std`.
        mean: per-channel mean (ImageNet's by default).
        std: per-channel standard deviation (ImageNet's by default).
        spectrum: the score, `"power"` (the reference) or `"magnitude"` spectral entropy.
        upscale: scale up images with too few patches (otherwise raise).

    Raises:
        ValueError: a non-positive patch size, counts that do not tile a square, or
            `deterministic=True` with `flip=True`.

    Examples:
        >>> t = PatchSelection(deterministic=True)
        >>> t(Image.new("RGB", (256, 256))).shape
        torch.Size([3, 224, 224])
    """

    def __init__(
        self,
        patch_size: int = 32,
        n_low: int = 24,
        n_high: int = 25,
        *,
        shuffle: bool = True,
        deterministic: bool = False,
        seed: int | None = None,
        flip: bool = False,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        spectrum: Literal["power", "magnitude"] = "power",
        upscale: bool = True,
    ) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if n_low < 0 or n_high < 0 or n_low + n_high < 1:
            raise ValueError(
                f"n_low and n_high must be >= 0 with a positive sum, got {n_low} and {n_high}"
            )
        n = n_low + n_high
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ValueError(
                f"n_low + n_high must be a perfect square to tile a square grid, "
                f"got {n_low} + {n_high} = {n}"
            )
        if deterministic and flip:
            raise ValueError(
                "deterministic=True is for evaluation and cannot flip randomly; set flip=False"
            )
        if spectrum not in ("power", "magnitude"):
            raise ValueError(f"spectrum must be 'power' or 'magnitude', got {spectrum!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values, std > 0; got {mean}, {std}")
        self.patch_size = int(patch_size)
        """Side of one square patch, in pixels (32 in DGS-Net)."""
        self.n_low, self.n_high = int(n_low), int(n_high)
        self.num_patches = n
        """Patches in the mosaic: the lowest- plus the highest-entropy ones (49)."""
        self.grid = grid
        """Patches per side of the mosaic (7)."""
        self.output_size = grid * self.patch_size
        """Side of the output image, `grid * patch_size` pixels (224)."""
        self.shuffle = shuffle
        """Whether the selected patches are placed in random order."""
        self.deterministic = deterministic
        """Whether the order comes from a fixed per-image seed (evaluation) instead of the global
        RNG."""
        self.seed = seed
        """The base seed of the deterministic order, or `None` for the default."""
        self.flip = flip
        """Whether the mosaic is flipped horizontally at random (training)."""
        self.normalize = normalize
        """Whether the output is normalised with `mean` and `std`."""
        self.mean = tuple(float(m) for m in mean)
        """Per-channel mean (RGB) subtracted when normalising."""
        self.std = tuple(float(s) for s in std)
        """Per-channel standard deviation (RGB) divided by when normalising."""
        self.spectrum = spectrum
        """The entropy score: `"power"` (the reference) or `"magnitude"` spectrum."""
        self.upscale = upscale
        """Whether images with too few patches are scaled up instead of refused."""
        self._generators: dict[int, torch.Generator] = {}

    # generators are process-local state: never pickle them into DataLoader workers
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"PatchSelection(patch_size={self.patch_size}, n_low={self.n_low}, "
            f"n_high={self.n_high}, shuffle={self.shuffle}, deterministic={self.deterministic}, "
            f"seed={self.seed}, flip={self.flip}, normalize={self.normalize}, "
            f"spectrum={self.spectrum!r})"
        )

    # -- randomness ---------------------------------------------------------------------------
    def _rng(self) -> torch.Generator | None:
        if self.deterministic:
            return torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else -1
        gen = self._generators.get(wid)
        if gen is None:
            gen = torch.Generator().manual_seed(int(self.seed) + _WORKER_SEED_STRIDE * (wid + 1))
            self._generators[wid] = gen
        return gen

    # -- steps --------------------------------------------------------------------------------
    def _prepare(self, img: Any) -> np.ndarray:
        """Input -> float64 `(3, H, W)` array in [0, 1], scaled up if it has too few
        patches."""
        p = self.patch_size
        if isinstance(img, Image.Image):
            w, h = img.size
            if (h // p) * (w // p) < self.num_patches:
                nh, nw = self._target_size(h, w)
                img = img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
            return _as_chw01(img)
        x = _as_chw01(img)
        h, w = x.shape[-2:]
        if (h // p) * (w // p) < self.num_patches:
            nh, nw = self._target_size(h, w)
            t = F.interpolate(
                torch.from_numpy(x)[None], size=(nh, nw), mode="bicubic", align_corners=False
            )
            x = t[0].clamp_(0.0, 1.0).numpy()
        return x

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.upscale:
            raise ValueError(
                f"a {w}x{h} image has {(h // self.patch_size) * (w // self.patch_size)} whole "
                f"{self.patch_size}x{self.patch_size} patches, {self.num_patches} are needed "
                "(upscale=False)"
            )
        s = self.output_size / min(h, w)
        return max(self.output_size, round(h * s)), max(self.output_size, round(w * s))

    def _patches_np(self, img: Any) -> tuple[np.ndarray, tuple[int, int]]:
        x = self._prepare(img)
        p = self.patch_size
        nh, nw = x.shape[-2] // p, x.shape[-1] // p
        x = x[:, : nh * p, : nw * p]
        tiles = x.reshape(3, nh, p, nw, p).transpose(1, 3, 0, 2, 4).reshape(nh * nw, 3, p, p)
        return tiles, (nh, nw)

    def _select_np(self, entropies: np.ndarray) -> np.ndarray:
        n = entropies.size
        if n < self.num_patches:
            raise ValueError(f"{n} patches, {self.num_patches} needed")
        order = np.argsort(entropies.reshape(-1), kind="stable")
        return np.concatenate([order[: self.n_low], order[n - self.n_high :]])

    def patches(self, img: Any) -> tuple[Tensor, tuple[int, int]]:
        """All whole patches in raster order, `(N, 3, p, p)` float64 in [0, 1], and the grid
        `(rows, cols)` they came from (after any upscaling).

        Args:
            img: the image, in any form `__call__` accepts.

        Returns:
            `(patches, (rows, cols))`.
        """
        tiles, grid = self._patches_np(img)
        return torch.from_numpy(np.ascontiguousarray(tiles)), grid

    def entropies(self, img: Any) -> Tensor:
        """Spectral entropy of every patch, raster order, `(N,)` float64.

        Args:
            img: the image, in any form `__call__` accepts.

        Returns:
            The entropies.
        """
        tiles, _ = self._patches_np(img)
        return torch.from_numpy(_entropy_np(_gray_np(tiles), self.spectrum))

    def select(self, entropies: Tensor | np.ndarray) -> Tensor:
        """Indices of the kept patches: the `n_low` lowest (ascending), then the `n_high`
        highest (ascending). Stable: equal scores keep raster order.

        Args:
            entropies: `(N,)` scores, one per patch.

        Returns:
            The `n_low + n_high` patch indices.
        """
        e = entropies.detach().cpu().numpy() if isinstance(entropies, Tensor) else entropies
        return torch.from_numpy(self._select_np(np.asarray(e)))

    def _mosaic(self, img: Any, generator: torch.Generator | None) -> np.ndarray:
        tiles, _ = self._patches_np(img)
        keep = self._select_np(_entropy_np(_gray_np(tiles), self.spectrum))
        if self.shuffle:
            keep = keep[torch.randperm(keep.size, generator=generator).numpy()]
        else:
            keep = np.sort(keep)
        g, p = self.grid, self.patch_size
        chosen = tiles[keep].astype(np.float32)
        return chosen.reshape(g, g, 3, p, p).transpose(2, 0, 3, 1, 4).reshape(3, g * p, g * p)

    def tile(self, img: Any, generator: torch.Generator | None = None) -> Tensor:
        """Steps 1-5: the `(3, S, S)` float32 mosaic in [0, 1], before flip and
        normalisation.

        Args:
            img: the image, in any form `__call__` accepts.
            generator: the random generator of the patch shuffle (with `shuffle=True`), or `None`.

        Returns:
            The mosaic.
        """
        return torch.from_numpy(np.ascontiguousarray(self._mosaic(img, generator)))

    def __call__(self, img: Any) -> Tensor:
        gen = self._rng()
        out = self._mosaic(img, gen)
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            out = out[:, :, ::-1]
        if self.normalize:
            mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
            out = (out - mean) / std
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
