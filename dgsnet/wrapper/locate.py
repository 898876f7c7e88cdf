"""Where a checkpoint is: a local folder, or a repository on the Hugging Face Hub.

`resolve_checkpoint("hf-hub:org/name")` (or `"org/name"`, or a local folder) returns a local
folder: for a repository id, the snapshot that `huggingface_hub.snapshot_download` keeps in
its cache (`HF_HOME` / `HF_HUB_CACHE`). With `HF_HUB_OFFLINE=1` (or no network)
huggingface_hub answers from that cache alone, and a repository that was never downloaded
raises a `CheckpointError` that says so. A revision is given as `hf-hub:org/name@REVISION` or
`revision=`. `pretrained_folder` adds the step `DGSWrapper.from_pretrained` needs: a
repository uploaded by `dgsnet push` holds its checkpoint in `final/`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .checkpoint import CONFIG_NAME

__all__ = [
    "HUB_PREFIX",
    "is_hub_id",
    "parse_hub_id",
    "pretrained_folder",
    "require_base_model",
    "resolve_checkpoint",
]

HUB_PREFIX = "hf-hub:"
"""The prefix of a Hugging Face Hub repository id in place of a folder (`hf-hub:user/name`)."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hub_id(text: str) -> tuple[str, str | None]:
    """`"hf-hub:org/name@rev"` -> `("org/name", "rev")` (the prefix and revision optional).

    Raises:
        ValueError: not of the form `org/name`.
    """
    body = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    repo, _, revision = body.partition("@")
    if not _REPO_ID.match(repo) or ".." in repo:
        raise ValueError(
            f"{text!r} is not a Hugging Face repository id: expected hf-hub:ORG/NAME "
            "(optionally @REVISION)"
        )
    return repo, revision or None


def is_hub_id(text: str | os.PathLike[str]) -> bool:
    """True for `hf-hub:org/name`, and for a bare `org/name` that is not a local path."""
    s = os.fspath(text)
    if s.startswith(HUB_PREFIX):
        return True
    if Path(s).exists():
        return False
    try:
        parse_hub_id(s)
    except ValueError:
        return False
    return True


def resolve_checkpoint(
    id_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder for a local path or a Hugging Face repository id.

    Args:
        id_or_path: a folder, `hf-hub:org/name[@revision]`, or `org/name` (a repository
            id when no such local path exists).
        revision: a branch, tag or commit (overrides one given after `@`).
        cache_dir: huggingface_hub's cache folder (default: its own, `HF_HUB_CACHE`).
        token: a Hub token for private repositories (default: huggingface_hub's login).

    Returns:
        The folder (for an id: the cached snapshot; read it, do not write to it).

    Raises:
        CheckpointError: the path does not exist, or the repository cannot be found online
            or in the cache (the message says whether offline mode is on).
    """
    text = os.fspath(id_or_path)
    if not is_hub_id(text):
        path = Path(text)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return path
    try:
        repo, rev = parse_hub_id(text)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return _download(repo, revision or rev, cache_dir, token)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download(
    repo: str, revision: str | None, cache_dir: str | os.PathLike[str] | None, token: Any
) -> Path:
    from huggingface_hub import errors, snapshot_download

    where = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            token=token,
        )
    except errors.LocalEntryNotFoundError as exc:
        mode = (
            "HF_HUB_OFFLINE is set and it is not in the local cache"
            if _offline()
            else "the Hub cannot be reached and it is not in the local cache"
        )
        raise CheckpointError(f"{where}: {mode} ({_short(exc)})") from exc
    except errors.RevisionNotFoundError as exc:
        raise CheckpointError(f"{where}: no such revision on the Hub ({_short(exc)})") from exc
    except errors.RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"{where}: no such repository on the Hub, or it is private and no token was "
            f"given ({_short(exc)})"
        ) from exc
    return Path(folder)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pretrained_folder(directory: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The checkpoint folder `DGSWrapper.from_pretrained` reads: `directory` itself, or, for
    a Hub repository id, its snapshot (its `final/` when the repository holds a run folder
    uploaded by `dgsnet push`).

    Args:
        directory: a checkpoint folder or a repository id (see `resolve_checkpoint`).
        revision: the Hub revision, for a repository id.

    Returns:
        The folder.

    Raises:
        CheckpointError: see `resolve_checkpoint`.
    """
    if not is_hub_id(directory):
        return Path(directory)
    folder = resolve_checkpoint(directory, revision)
    if not (folder / CONFIG_NAME).is_file() and (folder / "final" / CONFIG_NAME).is_file():
        return folder / "final"
    return folder


def require_base_model(model: Any, directory: str | os.PathLike[str]) -> None:
    """Raise a `CheckpointError` that says what to do when no base model was given.

    Args:
        model: what `DGSWrapper.from_pretrained` was given as the model.
        directory: the checkpoint folder or repository id it was given.

    Raises:
        CheckpointError: `model` is `None`.
    """
    if model is None:
        raise CheckpointError(
            f"DGSWrapper.from_pretrained({os.fspath(directory)!r}) needs the base model the "
            "checkpoint was trained on; dgsnet.evaluation.load_trained(path) builds it from the "
            "spec a run folder records (dgsnet_model.json) and loads the checkpoint"
        )
