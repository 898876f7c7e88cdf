"""Uploading a detector to the Hugging Face Hub: the folder a wrapper is shared as, and the
upload itself.

`DGSWrapper.push_to_hub(repo)` saves the wrapper (`final/`: `save_pretrained`'s files and,
when the base model's spec is given, `dgsnet_model.json`) beside a generated model card
(`README.md`, `dgsnet.wrapper.card`) in a temporary folder, then uploads it with
`huggingface_hub.HfApi`: `create_repo(exist_ok=True)`, `create_branch` for a revision, and one
`upload_folder` commit. `dgsnet push RUN_DIR` (`dgsnet.hub.push_to_hub`) uploads a whole run
folder the same way, with its training data description and evaluation tables.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..io import atomic_write_json, atomic_write_text
from .card import model_card
from .checkpoint import MODEL_INFO_NAME, read_checkpoint_meta
from .locate import parse_hub_id

__all__ = [
    "PushResult",
    "Shareable",
    "push_wrapper",
    "stage_wrapper",
    "upload_folder",
    "write_model_info",
]


class Shareable(Protocol):
    """What a wrapper needs to be shared: `save_pretrained` (`DGSWrapper` has it)."""

    def save_pretrained(self, directory: str | Path) -> Path: ...


@dataclass
class PushResult:
    """What an upload sent."""

    repo_id: str
    """The repository."""
    revision: str | None
    """The branch uploaded to (`None`: the default branch)."""
    files: list[str]
    """The uploaded files, relative to the repository root."""
    commit: Any = None
    """What `HfApi.upload_folder` returned (a `CommitInfo`)."""


def _model_info(model: str) -> dict[str, str]:
    """The content of `dgsnet_model.json` for the base model spec `model`, evaluated with its
    own preprocessing."""
    return {"format": "dgsnet.model", "spec": model, "transform": "model"}


def write_model_info(ckpt: Path, model: str) -> None:
    """Write `ckpt/dgsnet_model.json`: the base model is built from the spec `model` and
    evaluated with its own preprocessing (`transform: "model"`)."""
    atomic_write_json(ckpt / MODEL_INFO_NAME, _model_info(model))


def stage_wrapper(wrapper: Shareable, folder: Path, model: str | None) -> Path:
    """Save `wrapper` as `folder/final` (with `dgsnet_model.json` naming the base model when
    `model` is given); returns the checkpoint folder."""
    ckpt = folder / "final"
    wrapper.save_pretrained(ckpt)
    if model is not None:
        write_model_info(ckpt, model)
    return ckpt


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Create the repository (if needed) and upload `folder` as one commit.

    Args:
        folder: the complete folder to upload.
        repo_id: `org/name` (or `hf-hub:org/name[@revision]`).
        revision: the branch (created when missing; default: the main branch).
        private: create the repository as private (an existing one keeps its setting).
        token: a Hub token (default: huggingface_hub's login / `HF_TOKEN`).
        commit_message: the commit message.

    Returns:
        The repository, branch and files uploaded.

    Raises:
        ValueError: `repo_id` is not `org/name`.
    """
    from huggingface_hub import HfApi

    repo, rev = parse_hub_id(repo_id)
    revision = revision or rev
    root = Path(folder)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    api = HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo, branch=revision, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo,
        folder_path=root,
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload a DGS-Net detector with dgsnet",
    )
    return PushResult(repo_id=repo, revision=revision, files=files, commit=commit)


def push_wrapper(
    wrapper: Shareable,
    repo_id: str,
    *,
    model: str | None = None,
    license: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload `wrapper` with a generated model card (see the module docstring).

    Args:
        wrapper: the wrapper to share.
        repo_id: `org/name` (or `hf-hub:org/name[@revision]`).
        model: the base model's spec (e.g. `"ViT-L-14@openai"`), recorded so that
            `load_trained("hf-hub:org/name")` can rebuild it; `None`: not recorded.
        license: the license of the weights, for the card (`None`: stated as not given).
        revision: the branch to upload to.
        private: create the repository as private.
        token: a Hub token.
        commit_message: the commit message.

    Returns:
        The repository, branch and files uploaded.
    """
    repo, _ = parse_hub_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="dgsnet-push-") as tmp:
        folder = Path(tmp) / "upload"
        ckpt = stage_wrapper(wrapper, folder, model)
        info = _model_info(model) if model is not None else {}
        card = model_card(
            repo_id=repo, meta=read_checkpoint_meta(ckpt), model_info=info, license=license
        )
        atomic_write_text(folder / "README.md", card)
        return upload_folder(
            folder,
            repo_id,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
        )
