"""Image transforms: DGS-Net's patch selection, the model's own preprocessing, degradations.

`PatchSelection` and `spectral_entropy` (DGS-Net's preprocessing, arXiv 2511.13108) live in
`dgsnet.data.patch_selection` and are re-exported here.

`Degrade` applies the JPEG / blur / resize degradations of robustness tables to PIL
images before the model transform; `default_transform` wraps the model's own
preprocessing (an open_clip `preprocess`) with them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from PIL import Image, ImageFilter
from torch import Tensor

from .patch_selection import IMAGENET_MEAN, IMAGENET_STD, PatchSelection, spectral_entropy

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "spectral_entropy",
    "PatchSelection",
    "Degrade",
    "MAX_RESIZE_SCALE",
    "RandomHorizontalFlip",
    "default_transform",
    "ClipPreprocess",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel mean (RGB), used by its own preprocessing."""
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel standard deviation (RGB)."""


# --------------------------------------------------------------------------------------------
# degradations


#: the largest `Degrade` resize factor
MAX_RESIZE_SCALE = 4.0


class Degrade:
    """Degrade a PIL image for robustness evaluation, in this order:

    1. `resize_scale`: resize both sides by this factor (rounded, at least 1 pixel) with
       `interpolation` (PIL, antialiased when shrinking); the model transform resizes
       afterwards as usual;
    2. `blur_sigma`: Gaussian blur with this standard deviation (PIL `GaussianBlur`);
    3. `jpeg_quality`: encode as JPEG at this quality (1-100, PIL encoder, default chroma
       subsampling) and decode again.

    Each step is skipped when its argument is `None`. Deterministic. Returns an RGB image.

    Args:
        jpeg_quality: JPEG quality, an integer in 1..100.
        blur_sigma: Gaussian blur standard deviation (> 0).
        resize_scale: resize factor, in `(0, MAX_RESIZE_SCALE]` (robustness studies use
            0.25 to 2; a larger factor makes each image a memory hazard, 1000 makes a 64-pixel
            image 64000 pixels wide).
        interpolation: `"nearest"`, `"bilinear"`, `"bicubic"` or `"lanczos"`.

    Raises:
        ValueError: an argument out of range.
        TypeError: (on call) the input is not a PIL image.

    Examples:
        >>> Degrade(jpeg_quality=75, blur_sigma=1.0).name
        'blur1_jpeg75'
    """

    _INTERP = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }

    def __init__(
        self,
        jpeg_quality: int | None = None,
        blur_sigma: float | None = None,
        resize_scale: float | None = None,
        *,
        interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear",
    ) -> None:
        if jpeg_quality is not None:
            if (
                isinstance(jpeg_quality, bool)
                or int(jpeg_quality) != jpeg_quality
                or not (1 <= jpeg_quality <= 100)
            ):
                raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality}")
            jpeg_quality = int(jpeg_quality)
        if blur_sigma is not None and not (math.isfinite(blur_sigma) and blur_sigma > 0):
            raise ValueError(f"blur_sigma must be a positive number, got {blur_sigma}")
        if resize_scale is not None and not 0 < resize_scale <= MAX_RESIZE_SCALE:  # NaN: false
            raise ValueError(
                f"resize_scale must be a number in (0, {MAX_RESIZE_SCALE:g}], got {resize_scale}"
            )
        if interpolation not in self._INTERP:
            raise ValueError(
                f"interpolation must be one of {sorted(self._INTERP)}, got {interpolation!r}"
            )
        self.jpeg_quality = jpeg_quality
        """JPEG quality of the re-encoding (1..100), or `None`: no JPEG step."""
        self.blur_sigma = blur_sigma
        """Standard deviation of the Gaussian blur, in pixels, or `None`: no blur."""
        self.resize_scale = resize_scale
        """Resize factor, or `None`: no resize."""
        self.interpolation = interpolation
        """The resampling filter of the resize: `"nearest"`, `"bilinear"`, `"bicubic"` or
        `"lanczos"`."""

    @property
    def is_identity(self) -> bool:
        """True when every step is off (the image passes unchanged but for RGB conversion)."""
        return self.jpeg_quality is None and self.blur_sigma is None and self.resize_scale is None

    @property
    def name(self) -> str:
        """A short label for result tables, e.g. `"resize0.5_blur1_jpeg75"` (`"clean"`)."""
        parts = []
        if self.resize_scale is not None:
            parts.append(f"resize{self.resize_scale:g}")
        if self.blur_sigma is not None:
            parts.append(f"blur{self.blur_sigma:g}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        return "_".join(parts) or "clean"

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(
                f"Degrade works on PIL images, got {type(img).__name__}; apply it "
                "before the model transform"
            )
        img = img.convert("RGB")
        if self.resize_scale is not None:
            w, h = img.size
            size = (max(1, round(w * self.resize_scale)), max(1, round(h * self.resize_scale)))
            img = img.resize(size, self._INTERP[self.interpolation])
        if self.blur_sigma is not None:
            img = img.filter(ImageFilter.GaussianBlur(radius=self.blur_sigma))
        if self.jpeg_quality is not None:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=self.jpeg_quality)
            buf.seek(0)
            with Image.open(buf) as jpg:
                img = jpg.convert("RGB")
        return img

    def __repr__(self) -> str:
        return (
            f"Degrade(jpeg_quality={self.jpeg_quality}, blur_sigma={self.blur_sigma}, "
            f"resize_scale={self.resize_scale})"
        )


class RandomHorizontalFlip:
    """Flip a PIL image or a `(..., W)` tensor left-right with probability `p`.

    The draw uses torch's global RNG, so DataLoader workers differ.

    Args:
        p: the flip probability, in [0, 1].

    Raises:
        ValueError: `p` outside [0, 1].
        TypeError: (on call) neither a PIL image nor a tensor.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        """The probability of a flip."""

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, (Image.Image, Tensor)):  # checked before the draw: every call
            raise TypeError(f"cannot flip a {type(img).__name__}")
        if float(torch.rand(())) >= self.p:
            return img
        if isinstance(img, Image.Image):
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img.flip(-1)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class _Chain:
    def __init__(self, steps: Sequence[Callable[[Any], Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, img: Any) -> Any:
        for step in self.steps:
            img = step(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {s!r}," for s in self.steps)
        return f"Transform({inner}\n)"


class ClipPreprocess:
    """OpenAI CLIP's evaluation preprocessing, step for step as open_clip builds it
    (`open_clip.image_transform(size, is_train=False)`, the preprocess that
    `open_clip.create_model_and_transforms` returns): resize the shorter side to `size`
    (bicubic; the longer side `int(size * long / short)`), centre crop, convert to RGB
    (after the resize, as open_clip does: an RGBA or palette image is resized in its own
    mode), `[0, 1]` tensor, normalise. The result equals open_clip's tensor exactly.
    Picklable (DataLoader workers).

    Args:
        size: the output height and width.
        mean: per-channel mean (default: OpenAI CLIP's).
        std: per-channel standard deviation (default: OpenAI CLIP's).

    Examples:
        >>> ClipPreprocess(32)(Image.new("RGBA", (50, 40))).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self, size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        self.size = int(size)
        """Output height and width, in pixels."""
        self.mean = tuple(mean or OPENAI_CLIP_MEAN)
        """Per-channel mean (RGB) subtracted after scaling to [0, 1]."""
        self.std = tuple(std or OPENAI_CLIP_STD)
        """Per-channel standard deviation (RGB) divided by after subtracting the mean."""

    def __call__(self, img: Image.Image) -> Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = TF.resize(img, self.size, interpolation=InterpolationMode.BICUBIC)
        img = TF.center_crop(img, [self.size, self.size])
        x = TF.to_tensor(img.convert("RGB"))
        return TF.normalize(x, list(self.mean), list(self.std))

    def __repr__(self) -> str:
        return f"ClipPreprocess(size={self.size})"


def default_transform(
    preprocess: Callable[[Image.Image], Any] | None = None,
    *,
    train: bool = False,
    degrade: Degrade | None = None,
    image_size: int = 224,
) -> Callable[[Image.Image], Any]:
    """The dataset transform: `[degrade] -> [random flip if train] -> preprocess`.

    `preprocess` is the model's own preprocessing, typically the third value of
    `open_clip.create_model_and_transforms` (use the *val* one and `train=True` for the
    flip, or the train one with `train=False`), or a `PatchSelection`. `None`
    builds OpenAI CLIP's evaluation preprocessing at `image_size` (bicubic resize, centre
    crop, CLIP mean/std).

    Args:
        preprocess: the model's preprocessing, or `None` for OpenAI CLIP's.
        train: add a random horizontal flip before `preprocess`.
        degrade: degradations applied first (robustness evaluation).
        image_size: the size of the built-in preprocessing (with `preprocess=None`).

    Returns:
        A callable from a PIL image to what `preprocess` returns.

    Raises:
        TypeError: `preprocess` is not callable.

    Examples:
        >>> t = default_transform(degrade=Degrade(jpeg_quality=90))
        >>> t(Image.new("RGB", (300, 256))).shape
        torch.Size([3, 224, 224])
    """
    if preprocess is None:
        preprocess = ClipPreprocess(image_size)
    elif not callable(preprocess):
        raise TypeError(f"preprocess must be callable, got {type(preprocess).__name__}")
    steps: list[Callable[[Any], Any]] = []
    if degrade is not None and not degrade.is_identity:
        steps.append(degrade)
    if train:
        steps.append(RandomHorizontalFlip())
    steps.append(preprocess)
    return steps[0] if len(steps) == 1 else _Chain(steps)
