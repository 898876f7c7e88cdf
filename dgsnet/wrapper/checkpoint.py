"""Saving and loading a `DGSWrapper`'s trained weights.

A checkpoint is a folder with two files:

* `dgs_weights.safetensors`: the LoRA weights of the image tower and the three heads
  (image, text, teacher), named as `get_dgs_state_dict` names them;
* `dgs_config.json`: the `DGSConfig`, a description of the model it was
  saved from, the tensor shapes, the weights' sha256 and the config's (`config_sha256`:
  an edited setting is refused on loading instead of silently changing the scores). It is
  written last, so a folder with a valid JSON holds complete weights.

Both are written atomically (`dgsnet.io`); nothing is pickled. The functions follow the
layout of peft's `save_and_load` module: one function gets the state dict, one sets it, one
reads the weights file; `DGSWrapper.save_pretrained`/`from_pretrained`/`load_checkpoint`
call them.

Examples:
    >>> save_dgs_checkpoint(wrapper, "run/final")                       # doctest: +SKIP
    >>> load_dgs_checkpoint(other_wrapper, "run/final")                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..encoders import DualEncoder
from ..errors import CheckpointError
from ..io import atomic_write_json, load_tensors, save_tensors
from .config import DGSConfig

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_INFO_NAME",
    "CheckpointModel",
    "WEIGHTS_NAME",
    "config_digest",
    "config_from_meta",
    "get_dgs_state_dict",
    "load_dgs_checkpoint",
    "load_dgs_weights",
    "read_checkpoint_meta",
    "read_pretrained",
    "save_dgs_checkpoint",
    "set_dgs_state_dict",
    "check_same_function",
    "describe_head",
]

WEIGHTS_NAME = "dgs_weights.safetensors"
CONFIG_NAME = "dgs_config.json"
MODEL_INFO_NAME = "dgsnet_model.json"
"""Beside a checkpoint, when present: the base model's spec and preprocessing, from which
`dgsnet.evaluation.load_trained` rebuilds the model (written by the trainer, the importer of
released checkpoints and `push_to_hub`)."""
FORMAT_VERSION = 1

# the model properties a checkpoint must agree with (when both sides record them)
_MODEL_KEYS = ("kind", "feature_dim", "num_blocks", "image_size")


# settings that change what the weights compute; a checkpoint loaded into a wrapper that
# differs in one of them would score differently without an error (the others only change
# how a step is computed, not its result, or do not touch inference)
_FUNCTIONAL_FIELDS = (
    "num_classes",
    "loss",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "lora_layers",
    "lora_scaling",
    "normalize_features",
)


class CheckpointModel(Protocol):
    """The members of a wrapper that saving and loading use (`DGSWrapper` has them all)."""

    @property
    def config(self) -> DGSConfig: ...
    @property
    def encoder(self) -> DualEncoder: ...
    @property
    def lora_modules(self) -> list[str]: ...
    @property
    def image_head(self) -> nn.Module: ...
    @property
    def teacher_head(self) -> nn.Module: ...

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def clear_caches(self) -> None: ...


def describe_head(head: nn.Module) -> dict[str, Any]:
    """What a checkpoint records of the image head: its class and whether it is the wrapper's
    own linear head (a user's head must be supplied again when loading)."""
    cls = type(head)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "linear": cls is nn.Linear,
    }


def _own_parameters(wrapper: CheckpointModel) -> dict[str, nn.Parameter]:
    own = dict(wrapper.named_trainable_parameters())
    own.update({f"teacher_head.{n}": p for n, p in wrapper.teacher_head.named_parameters()})
    return own


def get_dgs_state_dict(wrapper: CheckpointModel) -> dict[str, Tensor]:
    """The tensors a checkpoint holds: LoRA weights, image and text heads, the teacher head.

    Returns:
        Detached tensors (sharing storage with the parameters) by checkpoint name.
    """
    return {name: p.detach() for name, p in _own_parameters(wrapper).items()}


def set_dgs_state_dict(
    wrapper: CheckpointModel, tensors: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> None:
    """Copy `tensors` into the wrapper's parameters, strictly, then clear its caches.

    Every check runs before the first copy, so a refused checkpoint leaves the wrapper as it
    was.

    Args:
        wrapper: the wrapper to load into.
        tensors: by the names `get_dgs_state_dict` gives.
        source: how error messages name where the tensors came from.

    Raises:
        CheckpointError: a name missing or unexpected, another shape, a non-floating dtype,
            or a NaN/Inf value.
    """
    own = _own_parameters(wrapper)
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    for name, param in own.items():
        _check_tensor(name, tensors[name], param)
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(tensors[name].to(param.dtype))
    wrapper.clear_caches()


def _check_tensor(name: str, value: Tensor, param: Tensor) -> None:
    if value.shape != param.shape:
        raise CheckpointError(
            f"checkpoint tensor {name!r} has shape {tuple(value.shape)}, the model's "
            f"parameter has shape {tuple(param.shape)}"
        )
    if not value.is_floating_point():
        raise CheckpointError(
            f"checkpoint tensor {name!r} has dtype {value.dtype}, expected floating point"
        )
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(
            f"checkpoint tensor {name!r} contains NaN or Inf: the run that saved it diverged"
        )


def save_dgs_checkpoint(wrapper: CheckpointModel, directory: str | Path) -> Path:
    """Write the wrapper's weights (safetensors) and config (JSON) into `directory`.

    Each file is written atomically; the JSON, written last, records the weights' sha256.

    Returns:
        `directory` as a `Path`.
    """
    directory = Path(directory)
    tensors = get_dgs_state_dict(wrapper)
    digest = save_tensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "dgsnet"})
    meta = {
        "format": "dgsnet",
        "format_version": FORMAT_VERSION,
        "config": wrapper.config.to_dict(),
        "model": wrapper.encoder.describe(),
        "lora_modules": wrapper.lora_modules,
        "image_head": describe_head(wrapper.image_head),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "weights_sha256": digest,
        "config_sha256": config_digest(wrapper.config),
    }
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """Read and check `directory/dgs_config.json`.

    Raises:
        CheckpointError: the file is missing, not JSON, not a dgsnet checkpoint config, has
            fields of the wrong type, or comes from a newer format version.
    """
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} holds no {CONFIG_NAME}: not a dgsnet checkpoint")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): truncated or damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != "dgsnet" or "config" not in meta:
        raise CheckpointError(f"{path} is not a dgsnet checkpoint config")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if not isinstance(meta.get("model", {}), dict):
        raise CheckpointError(
            f"{path}: 'model' must be a JSON object, got {type(meta['model']).__name__}"
        )
    if not isinstance(meta.get("weights_sha256", ""), (str, type(None))):
        raise CheckpointError(
            f"{path}: 'weights_sha256' must be a hex string, got {meta['weights_sha256']!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta['format_version']}; this dgsnet reads up to "
            f"{FORMAT_VERSION}"
        )
    return meta


def config_from_meta(meta: Mapping[str, Any], directory: str | Path) -> DGSConfig:
    """The `DGSConfig` recorded in a checkpoint's metadata.

    Raises:
        CheckpointError: the recorded config is invalid.
    """
    try:
        config = DGSConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{Path(directory) / CONFIG_NAME} holds an invalid config: {exc}"
        ) from exc
    recorded = meta.get("config_sha256")
    if recorded is not None and recorded != config_digest(config):
        raise CheckpointError(
            f"{Path(directory) / CONFIG_NAME}: the config was changed after the checkpoint was "
            "saved (it no longer matches its recorded config_sha256); the weights were trained "
            "with the saved settings (e.g. lora_alpha, normalize_features), so scores would "
            "change silently. Restore the file, or delete config_sha256 to load it as edited"
        )
    return config


def config_digest(config: DGSConfig) -> str:
    """The sha256 of `config`'s canonical JSON (sorted keys, no spaces), as a checkpoint
    records it in `config_sha256`. It is computed from the effective config, so a file
    written before a field existed (the field filled in with the value it was trained with)
    still matches; any edit that changes a setting does not."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_dgs_weights(
    directory: str | Path, meta: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """The tensors of `directory/dgs_weights.safetensors`, checked against the recorded
    sha256 (`meta` read from the folder when not given)."""
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    return load_tensors(directory / WEIGHTS_NAME, meta.get("weights_sha256"))


def load_dgs_checkpoint(
    wrapper: CheckpointModel, directory: str | Path, meta: Mapping[str, Any] | None = None
) -> None:
    """Load a checkpoint written by `save_dgs_checkpoint` into `wrapper` (strict).

    Args:
        wrapper: built around the same architecture as the saved one.
        directory: the checkpoint folder.
        meta: its metadata, when already read (`read_checkpoint_meta`).

    Raises:
        CheckpointError: the model differs from the saved one, or the files are damaged or
            do not fit (see `set_dgs_state_dict`).
    """
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    saved = config_from_meta(meta, directory)  # a config edited since the save is refused
    check_same_function(saved, wrapper.config, directory)
    saved_model, here = meta.get("model", {}), wrapper.encoder.describe()
    for key in _MODEL_KEYS:
        a, b = saved_model.get(key), here.get(key)
        if a is not None and b is not None and _as_list(a) != _as_list(b):
            raise CheckpointError(
                f"checkpoint {directory} was saved from a model with {key}={a}, but this model "
                f"has {key}={b}"
            )
    saved_head, head = meta.get("image_head"), describe_head(wrapper.image_head)
    if isinstance(saved_head, dict) and saved_head.get("class") != head["class"]:
        raise CheckpointError(
            f"checkpoint {directory} was saved with an image head of class "
            f"{saved_head.get('class')}, this wrapper's is {head['class']}: pass a head of the "
            "saved class (DGSWrapper(..., image_head=...))"
        )
    tensors = load_dgs_weights(directory, meta)
    set_dgs_state_dict(wrapper, tensors, source=str(directory))


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def read_pretrained(directory: str | Path, has_head: bool) -> tuple[dict[str, Any], DGSConfig]:
    """The metadata and config of a checkpoint about to be rebuilt by `from_pretrained`.

    Args:
        directory: the checkpoint folder.
        has_head: whether the caller passes an image head of its own.

    Returns:
        `(meta, config)`.

    Raises:
        CheckpointError: the folder is damaged, or it was saved with the user's own image
            head and `has_head` is false.
    """
    meta = read_checkpoint_meta(directory)
    config = config_from_meta(meta, directory)
    saved = meta.get("image_head")
    if not has_head and isinstance(saved, dict) and not saved.get("linear"):
        raise CheckpointError(
            f"{directory} was saved with your own image head ({saved.get('class')}): pass a "
            "fresh one, DGSWrapper.from_pretrained(directory, model, image_head=...)"
        )
    return meta, config


def check_same_function(saved: DGSConfig, current: DGSConfig, directory: str | Path) -> None:
    """Refuse to load weights into a wrapper whose config computes something else with them.

    Args:
        saved: the config the checkpoint was trained with.
        current: the config of the wrapper loading it.
        directory: the checkpoint folder (for the message).

    Raises:
        CheckpointError: a field in `_FUNCTIONAL_FIELDS` differs; the message names each.
    """
    a, b = saved.to_dict(), current.to_dict()
    diff = [
        f"{k}: saved {a[k]!r}, this wrapper {b[k]!r}" for k in _FUNCTIONAL_FIELDS if a[k] != b[k]
    ]
    if diff:
        raise CheckpointError(
            f"checkpoint {directory} was trained with another configuration than this "
            f"wrapper's ({'; '.join(diff)}), so its weights would compute different scores "
            "here. Build the wrapper with the saved config: DGSWrapper.from_pretrained(directory, "
            "model) does that"
        )
