"""Input checks of `DGSWrapper`: images, labels, captions, token ids, indices.

Each check either returns the input ready for the step (moved to the model's device, labels
as class indices) or raises `TypeError`/`ValueError` naming what was expected and what
arrived. Nothing is changed silently: a `(B, 1)` label column is the one reshaping accepted.

The checks are written to cost no device synchronisation where the data allows it: labels are
validated on their host copy, and `inputs_finite` returns a device flag that the step
reads together with its other checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NonFiniteInputError
from .caches import MAX_INDEX

__all__ = [
    "BatchChecker",
    "base_weight_name",
    "check_heads_placement",
    "first_floating",
    "tensor_at",
    "Placement",
    "autocast_enabled",
    "check_captions",
    "check_images",
    "check_index",
    "check_labels",
    "check_text_features",
    "check_tokens",
    "inputs_finite",
    "raise_nonfinite_inputs",
    "vocab_size",
]


def check_images(
    images: Any,
    *,
    image_size: Sequence[int] | None,
    device: torch.device,
    dtype: torch.dtype | None,
) -> int:
    """Check a batch of images for a model and return its batch size.

    Args:
        images: should be a floating tensor `(B, 3, H, W)` with `B >= 1`.
        image_size: the model's `(H, W)`, or `None` when it accepts any size.
        device: where the model lives; the images must already be there.
        dtype: the image tower's weight dtype; images must match it unless autocast is on.

    Returns:
        `B`.

    Raises:
        TypeError: `images` is not a tensor.
        ValueError: wrong rank, dtype, shape, device, or an empty batch.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a floating tensor of shape (B, 3, H, W), got shape "
            f"{tuple(images.shape)} and dtype {images.dtype}"
        )
    if images.shape[1] != 3 or (
        image_size is not None and tuple(images.shape[2:]) != tuple(image_size)
    ):
        want = f"(B, 3, {image_size[0]}, {image_size[1]})" if image_size else "(B, 3, H, W)"
        raise ValueError(f"images must have shape {want} for this model, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("empty batch: images has batch size 0")
    if images.device != device:
        raise ValueError(
            f"images are on {images.device} but the model is on {device}: move them with "
            f"images.to({str(device)!r})"
        )
    if dtype is not None and images.dtype != dtype and not autocast_enabled(images.device.type):
        raise ValueError(
            f"images are {images.dtype} but the image tower's weights are {dtype}: cast them "
            f"(images.to({dtype})) or run under torch.autocast"
        )
    return int(images.shape[0])


def inputs_finite(images: Tensor | None, text: Tensor | None = None) -> Tensor:
    """A 0-d bool tensor: no NaN/Inf in the images and the text features (either may be
    `None`).

    No device sync: the caller reads it together with the step's other checks.

    Args:
        images: the pixel batch, or `None`.
        text: precomputed text features, or `None`.

    Returns:
        The 0-d bool tensor, on the device of the first input given.
    """
    flags = [torch.isfinite(x).all() for x in (images, text) if x is not None]
    if not flags:
        return torch.tensor(True)
    ok = flags[0]
    return ok if len(flags) == 1 else ok & flags[1].to(ok.device)


def raise_nonfinite_inputs(images: Tensor | None, text: Tensor | None = None) -> None:
    """Raise if the images or text features hold NaN/Inf; return if there are none.

    Args:
        images: the pixel batch, or `None`.
        text: precomputed text features, or `None`.

    Raises:
        NonFiniteInputError: names the batch positions of the non-finite samples.
    """
    parts = []
    for what, t in (("images", images), ("text features", text)):
        if t is None:
            continue
        bad = (~torch.isfinite(t).flatten(1).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            parts.append(
                f"{what} in {len(bad)} of {t.shape[0]} samples (batch positions "
                f"{bad[:8]}{' ...' if len(bad) > 8 else ''})"
            )
    if parts:
        raise NonFiniteInputError(
            f"NaN or Inf in the input: {'; '.join(parts)}. Check the data pipeline, or set "
            "DGSConfig(nonfinite='ignore') to let the non-finite loss through to the trainer"
        )


def check_labels(
    labels: Any,
    batch: int,
    *,
    device: torch.device,
    num_classes: int,
    custom_loss: bool = False,
) -> Tensor:
    """Check labels and move them to `device`.

    Args:
        labels: a tensor or sequence of `batch` class indices (`(B,)` or `(B, 1)`).
        batch: the number of images.
        device: the model's device.
        num_classes: 1 (binary: labels in {0, 1}) or the number of classes.
        custom_loss: a user loss function takes the labels as they are: only the shape is
            checked then.

    Returns:
        Labels `(B,)` on `device` (`bool` ones as `int64`).

    Raises:
        TypeError: not convertible to a tensor, or complex.
        ValueError: wrong shape, non-integral values, or values out of range.
    """
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except Exception as exc:
            raise TypeError(
                f"labels must be a tensor or a sequence of numbers, got {type(labels).__name__}"
            ) from exc
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape ({batch},) to match {batch} images, got {tuple(labels.shape)}"
        )
    if labels.is_complex():
        raise TypeError(f"labels must be real class indices, got dtype {labels.dtype}")
    # labels from a data loader live on the CPU: copy them without blocking and validate
    # the host copy, so that the check costs no device synchronisation
    host = labels if labels.device.type == "cpu" else None
    try:
        labels = labels.to(device, non_blocking=host is not None)
    except (RuntimeError, NotImplementedError) as exc:  # e.g. a meta tensor: no data
        raise ValueError(f"labels on {labels.device} cannot be moved to {device}: {exc}") from None
    if custom_loss:
        return labels
    check = labels if host is None else host
    if check.is_floating_point():
        if not bool(torch.isfinite(check).all()) or not bool((check == check.round()).all()):
            raise ValueError(f"labels must be whole class indices, got {check.tolist()[:8]}")
    elif labels.dtype == torch.bool:
        labels, check = labels.long(), check.long()
    high = 1 if num_classes == 1 else num_classes - 1
    bad = (check < 0) | (check > high)
    if bool(bad.any()):
        vals = sorted({float(v) for v in check[bad].tolist()})[:8]
        expected = "{0, 1} (0 = real, 1 = fake)" if high == 1 else f"0..{high}"
        raise ValueError(f"labels must be in {expected}, got value(s) {vals}")
    return labels


def check_text_features(text: Tensor, feature_dim: int) -> None:
    """Precomputed text features must be `(B, feature_dim)` and hold data.

    Args:
        text: the text features.
        feature_dim: `D`, the joint feature dimension.

    Raises:
        ValueError: another shape, or a meta tensor.
    """
    if text.dim() != 2 or text.shape[1] != feature_dim:
        raise ValueError(
            f"precomputed text features must have shape (B, {feature_dim}), got {tuple(text.shape)}"
        )
    if text.device.type == "meta":
        raise ValueError("precomputed text features are a meta tensor (no data)")


def check_captions(text: Sequence[Any]) -> list[str]:
    """A non-empty sequence of caption strings, as a list.

    Args:
        text: the captions.

    Returns:
        The captions, as a list.

    Raises:
        ValueError: the sequence is empty.
        TypeError: an item is not a string.
    """
    if len(text) == 0:
        raise ValueError("empty caption list: expected one caption per image")
    for i, c in enumerate(text):
        if not isinstance(c, str):
            raise TypeError(f"captions must be strings; item {i} is {type(c).__name__}")
    return list(text)


def check_tokens(ids: Tensor, *, device: torch.device, vocab: int | None) -> Tensor:
    """Token ids given by the caller: an integer `(B, L)` tensor of ids in the vocabulary.

    Out-of-range ids would fail deep inside the embedding (on CUDA as a device assert), so
    they are refused here.

    Args:
        ids: the token ids.
        device: the model's device.
        vocab: the vocabulary size, or `None` when unknown (only negatives are refused).

    Returns:
        `ids` on `device`.

    Raises:
        TypeError: a complex or bool tensor.
        ValueError: wrong rank, a meta tensor, or ids outside `[0, vocab)`.
    """
    if ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"token ids must be an integer tensor (B, L), got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape (B, L), got {tuple(ids.shape)}")
    if ids.device.type == "meta":
        raise ValueError("token ids are a meta tensor (no data)")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (vocab is not None and hi >= vocab):
            raise ValueError(
                f"token ids must lie in [0, {vocab if vocab is not None else 'vocab'}), got "
                f"values in [{lo}, {hi}]"
            )
    return ids.to(device)


def check_index(index: Any, batch: int) -> Tensor | None:
    """Dataset indices of a batch: `None`, or `batch` integers in `[0, MAX_INDEX)`.

    Args:
        index: the indices, or `None`.
        batch: `B`, the number of images.

    Returns:
        `None`, or the indices as a `(B,)` integer tensor.

    Raises:
        TypeError: not convertible to a tensor.
        ValueError: wrong shape or dtype, a meta tensor, or values out of range.
    """
    if index is None:
        return None
    if not isinstance(index, Tensor):
        try:
            index = torch.as_tensor(index)
        except Exception as exc:
            raise TypeError(
                f"index must be {batch} integer dataset indices, got {type(index).__name__}"
            ) from exc
    if (
        index.dim() != 1
        or index.shape[0] != batch
        or index.is_floating_point()
        or index.is_complex()
        or index.dtype == torch.bool
    ):
        raise ValueError(
            f"index must be {batch} non-negative integer dataset indices, got shape "
            f"{tuple(index.shape)} dtype {index.dtype}"
        )
    if index.device.type == "meta":
        raise ValueError("index is a meta tensor (no data)")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= MAX_INDEX):
        raise ValueError(
            f"index must hold dataset positions in [0, {MAX_INDEX}) (the teacher cache is "
            f"dense, sized by the largest index), got values in [{int(index.min())}, "
            f"{int(index.max())}]"
        )
    return index


def vocab_size(model: Any) -> int | None:
    """The text tower's vocabulary size (open_clip / OpenAI CLIP / Hugging Face), else None.

    Args:
        model: the CLIP-like model.

    Returns:
        The vocabulary size, or `None` when the model does not say.
    """
    for owner in (model, getattr(model, "text", None)):
        emb = getattr(owner, "token_embedding", None)
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    config = getattr(getattr(model, "config", None), "text_config", None)
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else None


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (any torch since 2.0).

    Args:
        device_type: e.g. `"cuda"` or `"cpu"`.

    Returns:
        Whether autocast is on.
    """
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


@dataclass(frozen=True)
class Placement:
    """Where a model's weights live: what its inputs must match."""

    device: torch.device
    dtype: torch.dtype | None
    """the image tower's floating weight dtype (`None`: no floating weights)"""


class BatchChecker:
    """The step's input checks for one model, with the model's facts bound once.

    `images`, `labels` and `index` return the input ready for the step or raise naming what
    was expected and what arrived (see `check_images`, `check_labels`, `check_index`). The
    device and dtype are read from `placement()` at every call, so they follow the model
    when it is moved or cast.

    Args:
        placement: returns the model's current device and image-tower dtype.
        image_size: the `(H, W)` the image tower expects, or `None` for any size.
        num_classes: `DGSConfig.num_classes`.
        custom_loss: labels go to a user's loss as they are (only the shape is checked).
    """

    def __init__(
        self,
        placement: Callable[[], Placement],
        *,
        image_size: Sequence[int] | None,
        num_classes: int,
        custom_loss: bool,
    ) -> None:
        self.placement = placement
        self.image_size = tuple(image_size) if image_size is not None else None
        self.num_classes = num_classes
        self.custom_loss = custom_loss

    def images(self, images: Any) -> int:
        """Check a batch of images (`check_images`); returns the batch size."""
        where = self.placement()
        return check_images(
            images, image_size=self.image_size, device=where.device, dtype=where.dtype
        )

    def labels(self, labels: Any, batch: int) -> Tensor:
        """Check labels (`check_labels`); returns them as `(B,)` on the model's device."""
        if labels is None:
            raise TypeError(
                f"labels are required: {batch} class indices (0 = real, 1 = fake for binary "
                "detection), e.g. dgs(images, captions, labels)"
            )
        return check_labels(
            labels,
            batch,
            device=self.placement().device,
            num_classes=self.num_classes,
            custom_loss=self.custom_loss,
        )

    def index(self, index: Any, batch: int) -> Tensor | None:
        """Check dataset indices (`check_index`)."""
        return check_index(index, batch)

    def features(self, features: Any, dim: int) -> int:
        """Check image features handed to `DGSWrapper.apply_surgery`; returns `B`.

        Raises:
            TypeError: not a floating tensor.
            ValueError: not `(B, dim)`, empty, on another device, or carrying no gradient.
        """
        if not isinstance(features, Tensor) or not features.is_floating_point():
            what = features.dtype if isinstance(features, Tensor) else type(features).__name__
            raise TypeError(f"features must be a floating tensor (B, {dim}), got {what}")
        if features.dim() != 2 or features.shape[1] != dim or features.shape[0] == 0:
            raise ValueError(
                f"features must have shape (B, {dim}) with B >= 1 (the joint image-text "
                f"embedding the surgery works in), got {tuple(features.shape)}"
            )
        device = self.placement().device
        if features.device != device:
            raise ValueError(f"features are on {features.device} but the model is on {device}")
        if not features.requires_grad:
            raise ValueError(
                "features carry no gradient: compute them with grad (not under torch.no_grad) "
                "from the encoder that LoRA adapts, or the surgery has nothing to act on"
            )
        return int(features.shape[0])


def check_heads_placement(
    where: Placement, heads: Mapping[str, nn.Module], own: Sequence[str]
) -> None:
    """Every head must sit on the image tower's device; the heads named in `own` (the
    wrapper's own) must also have its dtype.

    Args:
        where: the image tower's placement.
        heads: the heads by name (`"text"`, `"teacher"`, `"image"`).
        own: the names of the heads whose dtype must match too.

    Raises:
        ValueError: names the head that is elsewhere, and the one line that fixes it.
    """
    for name, head in heads.items():
        p = next(head.parameters(), None)
        if p is None:
            continue
        cast = name in own and where.dtype is not None and p.dtype != where.dtype
        if p.device != where.device or cast:
            raise ValueError(
                f"the DGS {name} head is {p.dtype} on {p.device}, the image tower "
                f"{where.dtype} on {where.device}: move or cast the wrapper, which holds your "
                f"model and every head, as one (dgs.to({str(where.device)!r}), dgs.half()), "
                "not the model alone"
            )


def first_floating(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of `module`'s first floating parameter (CPU and the default
    dtype when it has none).

    Args:
        module: the module.

    Returns:
        `(device, dtype)`.
    """
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def base_weight_name(tower: nn.Module) -> str | None:
    """The name of the image tower's first floating base (non-LoRA) parameter: its device
    and dtype are what the images must match.

    Args:
        tower: the image tower.

    Returns:
        The dotted name, or `None` when the tower has no floating base weight.
    """
    for n, p in tower.named_parameters():
        if p.is_floating_point() and "lora_" not in n:
            return n
    return None


def tensor_at(module: nn.Module, name: str | None) -> Tensor | None:
    """The tensor at the dotted attribute path `name` below `module`: a parameter, or the
    plain tensor a sharding wrapper (FSDP) left in its place; `None` when there is none.

    Args:
        module: where the path starts.
        name: the dotted path, or `None`.

    Returns:
        The tensor, or `None`.
    """
    if name is None:
        return None
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, Tensor) else None
