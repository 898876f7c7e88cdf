"""Building a `DGSWrapper` from a released checkpoint (`load_released`): the open_clip
model from the file's config, its pristine weights, the LoRA factors and the heads."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..wrapper import DGSConfig
from .layout import RELEASED_ALPHA, RELEASED_DROPOUT, TEACHER1, TEACHER2, ReleasedCheckpoint
from .reading import read_released

__all__ = ["load_released"]

log = logging.getLogger("dgsnet.interop")


def build_clip(cfg: Mapping[str, Any]) -> nn.Module:
    import open_clip

    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: no global RNG use
        torch.manual_seed(0)
        return open_clip.CLIP(
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
        )


def check_base(
    path: Path, own: Mapping[str, Tensor], base: Mapping[str, Tensor], prefix: str
) -> None:
    """The model's state dict `own` and the file's pristine CLIP have the same keys and
    shapes (errors name the file's key)."""
    missing = sorted(set(own) - set(base))
    if missing:
        raise CheckpointError(
            f"{path}: missing key {prefix + missing[0]!r} that the model needs (a different "
            "model architecture?)"
        )
    unknown = sorted(set(base) - set(own))
    if unknown:
        raise CheckpointError(
            f"{path}: key {prefix + unknown[0]!r} has no counterpart in the model (a different "
            "model architecture?)"
        )
    for k, v in own.items():
        if base[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: {prefix + k!r} has shape {tuple(base[k].shape)}, the model's has "
                f"{tuple(v.shape)}: the file is from a different model size"
            )


def load_base(path: Path, model: nn.Module, base: Mapping[str, Tensor], prefix: str) -> None:
    """Load the pristine weights into `model` (strict; errors name the file's key)."""
    own = model.state_dict()
    check_base(path, own, base, prefix)
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(base[k].to(v.dtype))


def wrap_released(
    ckpt: ReleasedCheckpoint, model: nn.Module, tokenizer: Any, dropout: float
) -> Any:
    from ..wrapper import DGSWrapper

    info = ckpt.info
    config = DGSConfig.reference(
        lora_rank=info.rank, lora_alpha=info.alpha, lora_dropout=dropout, lora_scaling="rslora"
    )
    with torch.random.fork_rng(devices=[]):  # peft's init of A (stage 1): reproducible
        torch.manual_seed(0)
        wrapper = DGSWrapper(model, tokenizer, config)
    tower = wrapper.encoder.image_tower
    if ckpt.lora and set(wrapper.lora_modules) != set(ckpt.lora):
        raise CheckpointError(
            f"{info.source}: the file adapts {sorted(ckpt.lora)[:3]}..., the model's LoRA "
            f"targets are {wrapper.lora_modules[:3]}..."
        )
    with torch.no_grad():
        for name, (a, b) in ckpt.lora.items():
            layer: Any = tower.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
        heads: list[tuple[Any, tuple[Tensor, Tensor]]] = [(wrapper.teacher_head, ckpt.teacher_head)]
        if ckpt.image_head is not None and ckpt.text_head is not None:
            heads += [(wrapper.image_head, ckpt.image_head), (wrapper.text_head, ckpt.text_head)]
        for head, (w, b) in heads:
            if head.weight.shape != w.shape:
                raise CheckpointError(
                    f"{info.source}: a head of shape {tuple(w.shape)} does not fit the model's "
                    f"{tuple(head.weight.shape)} (num_classes)"
                )
            head.weight.copy_(w)
            head.bias.copy_(b)
    wrapper.clear_caches()
    # a plain attribute (nn.Module.__setattr__ stores non-tensor, non-module values as such)
    object.__setattr__(wrapper, "released_import", info)
    return wrapper


def load_released(
    path: str | os.PathLike[str],
    model: Any = None,
    tokenizer: Any = None,
    *,
    alpha: float = RELEASED_ALPHA,
    dropout: float = RELEASED_DROPOUT,
    head_width: int = 64,
    quick_gelu: bool = True,
) -> Any:
    """A `DGSWrapper` holding a released DGS-Net checkpoint.

    The student is the pristine CLIP of the file plus its LoRA with the released scaling
    `alpha / sqrt(r)` (`DGSConfig.reference(lora_scaling="rslora")`, rank read from the
    shapes of `A`); the heads are the file's. A stage-1 file gives the teacher head (LoRA
    `B = 0` and fresh image/text heads), from which stage 2 can start.
    `wrapper.released_import` (a `ReleasedImport`) says what was found, including
    whether the q/k/v weights were saved merged.

    Args:
        path: the released `.pth` file.
        model: an open_clip CLIP to load into (its weights are replaced by the file's
            pristine CLIP; its architecture must match, else `CheckpointError`).
            `None`: build the open_clip model from the shapes of the file's weights
            (`released_model_config`); nothing is downloaded.
        tokenizer: for captions (training); `None`: open_clip's CLIP BPE tokenizer when
            `model` is `None`.
        alpha: the LoRA alpha of the run (released: 6; not stored in the file).
        dropout: LoRA dropout for further training (released: 0.8; no effect on predictions).
        head_width: attention head width when building the model (OpenAI CLIP: 64).
        quick_gelu: QuickGELU MLPs when building the model (OpenAI CLIP: yes).

    Returns:
        The wrapper, in eval mode.

    Raises:
        CheckpointError: see `read_released`; also a `model` that does not fit.
    """
    ckpt = read_released(path, alpha=alpha, head_width=head_width, quick_gelu=quick_gelu)
    prefix = TEACHER2 if ckpt.info.stage == 2 else TEACHER1
    if model is None:
        model = build_clip(ckpt.info.model_config)
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-L-14")  # OpenAI's BPE; ships with open_clip
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an open_clip CLIP (nn.Module), got {type(model).__name__}")
    load_base(Path(path), model, ckpt.base, prefix)
    wrapper = wrap_released(ckpt, model, tokenizer, dropout)
    wrapper.eval()
    i = ckpt.info
    log.info(
        "read released stage-%d checkpoint %s: rank %d, alpha %g (scaling %.4g), %s",
        i.stage,
        i.source,
        i.rank,
        i.alpha,
        i.scaling,
        {
            True: "merged q/k/v weights (unmerged on import)",
            False: "unmerged weights",
            None: "no LoRA delta",
        }[i.merged],
    )
    return wrapper
