"""One face for CLIP-like dual encoders.

Anything that is not open_clip/OpenAI CLIP or a Hugging Face CLIP/SigLIP model can be used by
subclassing `DualEncoder` and passing the instance to `DGSWrapper`. The contract:

* `model`: the `nn.Module` that owns every weight (the wrapper registers it as a submodule);
* `image_tower`: the sub-module LoRA is attached to, whose block list is named by
  `block_pattern` (e.g. `"resblocks"`) for layer selection;
* `encode_image(pixels) -> (B, D)` and `encode_text(tokens) -> (B, D)`: the joint-space
  features (same `D` for both towers: the surgery projects image gradients on text gradients);
* `tokenize(list[str]) -> tokens` truncating to the context length;
* `image_size`: `(H, W)` the image tower expects, or `None` when it accepts any size;
* `default_lora_targets`: leaf module names LoRA adapts by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import EncoderError

#: Tokenised captions: a `(B, L)` LongTensor (open_clip) or a mapping of tensors such as a
#: Hugging Face tokenizer's `input_ids` / `attention_mask`.
Tokens = Tensor | Mapping[str, Tensor]


class DualEncoder:
    """Base class of the encoder adapters (see the module docstring for the contract).

    Subclass it, implement the required members, and pass an instance as `DGSWrapper`'s
    model to use a dual encoder that dgsnet does not know.

    Args:
        model: the module that owns every weight.
        tokenizer: turns a list of captions into `Tokens` (used by `tokenize`).

    Attributes:
        kind: a short name stored in checkpoints (`"open_clip"`, `"hf"`, `"custom"`).
        block_pattern: the name of the image tower's block list, for layer selection.
        default_lora_targets: leaf module names LoRA adapts by default.
    """

    kind: str = "custom"
    block_pattern: str = "blocks"
    default_lora_targets: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        """What `tokenize` calls. A Hugging Face processor (e.g. `CLIPProcessor`) given here
        is replaced by its text tokenizer: called on strings, a processor would read them
        as images."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer = text_tokenizer(value)

    # -- required -----------------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        """The image encoder, the sub-module LoRA is attached to."""
        raise NotImplementedError

    def encode_image(self, pixels: Tensor) -> Tensor:
        """`(B, 3, H, W)` pixels to `(B, D)` joint-space image features.

        Args:
            pixels: `(B, 3, H, W)` preprocessed images.

        Returns:
            `(B, D)` features.
        """
        raise NotImplementedError

    def encode_text(self, tokens: Tokens) -> Tensor:
        """Tokens of `B` captions to `(B, D)` joint-space text features.

        Args:
            tokens: what `tokenize` returns, for `B` captions.

        Returns:
            `(B, D)` features.
        """
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """Tokenise captions, truncating each to the model's context length.

        Args:
            texts: the captions.

        Returns:
            The tokens (`Tokens`).
        """
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int] | None:
        """`(H, W)` the image tower expects, or `None` when it accepts any size."""
        return None

    # -- optional -----------------------------------------------------------------------------
    def prepare_for_lora(self, targets: Sequence[str]) -> None:
        """Restructure the image tower, if needed, so that every target is an `nn.Linear`.

        Args:
            targets: the leaf module names LoRA will adapt.
        """

    def blocks(self) -> Sequence[nn.Module] | None:
        """The image tower's transformer blocks in order (for the shared-trunk optimisation)."""
        return None

    def encode_image_split(
        self, pixels: Tensor, start: int
    ) -> tuple[Tensor, Any]:  # pragma: no cover - optional capability
        """Run the tower up to block `start` and return `(activation, state)`.

        Args:
            pixels: `(B, 3, H, W)` preprocessed images.
            start: the index of the first block not run.

        Returns:
            The activation entering block `start`, and the state `encode_image_from`
            needs with it.
        """
        raise NotImplementedError

    def encode_image_from(
        self, hidden: Tensor, state: Any, start: int, pooled_only: bool = False
    ) -> Tensor:  # pragma: no cover
        """Continue `encode_image_split`'s result from block `start` to the features.

        `pooled_only=True` allows skipping work the pooled features never read.

        Args:
            hidden: the activation entering block `start`.
            state: what `encode_image_split` returned with it.
            start: the index of the first block to run.
            pooled_only: the caller reads only the pooled features, so work they never
                read may be skipped.

        Returns:
            `(B, D)` features.
        """
        raise NotImplementedError

    def encode_image_pooled(self, pixels: Tensor) -> Tensor:
        """Like `encode_image`, for callers that need no gradient.

        Adapters may skip work the pooled features never read (the teacher's forward uses
        this).

        Args:
            pixels: `(B, 3, H, W)` preprocessed images.

        Returns:
            `(B, D)` features.
        """
        return self.encode_image(pixels)

    # -- helpers ------------------------------------------------------------------------------
    def feature_dim(self, device: torch.device | None = None) -> int:
        """The joint feature dimension, measured by one forward of a tiny batch.

        Args:
            device: a device for the probe forward (adapters may ignore it).

        Returns:
            `D`.
        """
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A JSON-able signature of the model's shape, stored in checkpoints."""
        return {"kind": self.kind, "image_size": self.image_size}

    @property
    def text_entry(self) -> str:
        """How error messages name the model's text entry point (e.g. `CLIP.encode_text`)."""
        return f"{type(self).__name__}.encode_text"

    def probe_tokens(self) -> Tokens:
        """Tokens of one short caption, for `check_text_tower` (tokenised with the tokenizer
        when there is one)."""
        return self.tokenize(["a photo"])

    def check_text_tower(self, feature_dim: int) -> None:
        """Run the text tower once on one token sequence, so that a broken or missing text
        tower fails here, at construction, instead of at the first training step.

        The random number generators are left as they were.

        Args:
            feature_dim: the image features' dimension, which the text features must share.

        Raises:
            EncoderError: the text tower raised, or gave features of another shape.
        """
        p = first_param(self.model)
        devices = [p.device.index or 0] if p.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                out = self.encode_text(self.probe_tokens())
        except Exception as exc:
            raise EncoderError(
                f"the model's text tower failed on one caption: {self.text_entry} raised "
                f"{type(exc).__name__}: {exc}. Orthogonal Suppression encodes every caption with "
                "it; fix the text tower, or use DGSConfig(suppression=False), which needs none"
            ) from exc
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape != (1, feature_dim):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise EncoderError(
                f"{self.text_entry} gave {shape} for one caption, expected (1, {feature_dim}): "
                "the surgery needs text features in the joint image-text embedding space"
            )


def text_tokenizer(tokenizer: Any) -> Any:
    """The text tokenizer inside `tokenizer` when it is a Hugging Face processor (an object
    with a `tokenizer` and an `image_processor` or `feature_extractor`), else `tokenizer`.

    Args:
        tokenizer: a tokenizer, a processor, or `None`.

    Returns:
        The tokenizer to call on caption strings.
    """
    inner = getattr(tokenizer, "tokenizer", None)
    is_processor = any(
        getattr(tokenizer, a, None) is not None for a in ("image_processor", "feature_extractor")
    )
    return inner if inner is not None and is_processor else tokenizer


def first_param(module: nn.Module) -> Tensor:
    """The first parameter of `module`, else its first buffer (to read device and dtype).

    Args:
        module: the module.

    Returns:
        Its first parameter or buffer.

    Raises:
        ValueError: the module has neither.
    """
    for p in module.parameters():
        return p
    for b in module.buffers():
        return b
    raise ValueError(f"{type(module).__name__} has no parameters or buffers")
