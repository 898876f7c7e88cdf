"""Sharing detectors on the Hugging Face Hub: resolving repository ids, and uploading runs.

* `resolve_checkpoint("hf-hub:org/name")` (or `"org/name"`, or a local folder) returns a
  local folder: for a repository id, the snapshot that `huggingface_hub.snapshot_download`
  puts in its cache (`HF_HOME` / `HF_HUB_CACHE`). With `HF_HUB_OFFLINE=1` (or no network)
  huggingface_hub answers from that cache alone, and a repository that was never downloaded
  raises a `CheckpointError` that says so. `dgsnet predict hf-hub:org/name ...`,
  `dgsnet eval`, `dgsnet export`, `load_trained` and `DGSWrapper.from_pretrained` accept
  such ids; a revision is given as `hf-hub:org/name@REVISION` or `revision=`. (The
  resolution lives in `dgsnet.wrapper.locate`, so that the wrapper can use it; it is
  re-exported here.)
* `push_to_hub(run_dir, "org/name")` (`dgsnet push RUN_DIR org/name`) assembles the folder
  to upload (`stage_upload`: the final weights and their JSON, the stored base model of an
  imported released checkpoint, the run's settings with local paths reduced to folder names,
  evaluation tables, optional exports, and a generated model card, `README.md`, see
  `dgsnet.model_card`), then creates the repository and uploads the folder with
  `huggingface_hub.HfApi`. Nothing is uploaded before the folder is complete.

No network is reachable where dgsnet's tests run: resolution is tested against a cache
that huggingface_hub itself filled from a local test server, and the upload up to the
`HfApi` calls.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io import atomic_write_json, atomic_write_text
from .wrapper.checkpoint import MODEL_INFO_NAME
from .wrapper.locate import HUB_PREFIX, is_hub_id, parse_hub_id, resolve_checkpoint
from .wrapper.sharing import PushResult, stage_wrapper, upload_folder, write_model_info

__all__ = [
    "HUB_PREFIX",
    "PushResult",
    "is_hub_id",
    "parse_hub_id",
    "push_to_hub",
    "resolve_checkpoint",
    "stage_upload",
]

# -- uploading ----------------------------------------------------------------------------

#: run.json option keys that hold local paths (reduced to their last component on upload)
_PATH_KEYS = ("out", "roots", "captions", "cache_dir", "config", "init_from", "resume")


def _public_paths(value: Any) -> Any:
    if isinstance(value, str) and value:
        return Path(value).name or value
    if isinstance(value, list):
        return [_public_paths(v) for v in value]
    return value


def _public_run(run: dict[str, Any]) -> dict[str, Any]:
    """`run.json` with the local paths of its options reduced to folder names."""
    out = json.loads(json.dumps(run))
    options = out.get("options")
    if isinstance(options, dict):
        for key in _PATH_KEYS:
            if key in options:
                options[key] = _public_paths(options[key])
    out["paths_reduced_to_names"] = list(_PATH_KEYS)
    return out


def _copy_checkpoint(ckpt: Path, folder: Path, staged_files: Sequence[str]) -> None:
    (folder / "final").mkdir(parents=True, exist_ok=True)
    for name in staged_files:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, folder / "final" / name)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else None


def _eval_files(run_dir: Path | None, given: Sequence[str | os.PathLike[str]]) -> list[Path]:
    found = [Path(p) for p in given]
    if run_dir is not None:
        for candidate in sorted([*run_dir.glob("*.json"), *run_dir.glob("eval/*.json")]):
            data = _read_json(candidate) if candidate.stat().st_size < 10_000_000 else None
            if data is not None and data.get("format") == "dgsnet.eval":
                found.append(candidate)
    return list(dict.fromkeys(p.resolve() for p in found))


def _stage_evals(folder: Path, files: list[Path]) -> dict[str, dict[str, Any]]:
    evals = {}
    for path in files:
        data = _read_json(path)
        if data is None or data.get("format") != "dgsnet.eval":
            raise CheckpointError(
                f"{path} is not an evaluation file written by `dgsnet eval --json`"
            )
        name = path.name
        data = dict(data)
        data["checkpoint"] = _public_paths(data.get("checkpoint"))
        for entry in data.get("roots", []):
            if isinstance(entry, dict):
                entry["root"] = _public_paths(entry.get("root"))
        atomic_write_json(folder / "eval" / name, data)
        evals[name] = data
    return evals


def _stage_base(src_ckpt: Path, folder: Path, info: dict[str, Any]) -> bool:
    """Copy a base model stored beside the run (`local-dir:` relative to `final/`, as
    `dgsnet import-released` writes it) into the upload; True when one was copied."""
    spec = info.get("spec")
    if not isinstance(spec, str) or not spec.startswith("local-dir:"):
        return False
    rel = spec[len("local-dir:") :]
    if os.path.isabs(rel):
        return False
    source = (src_ckpt / rel).resolve()
    target = Path(os.path.normpath(folder / "final" / rel))
    if folder.resolve() not in target.resolve().parents or not source.is_dir():
        return False
    shutil.copytree(source, target)
    return True


def _stage_run_files(run_dir: Path | None, folder: Path) -> tuple[dict | None, dict | None]:
    from .interop.layout import IMPORT_NAME
    from .training.state import RUN_NAME

    if run_dir is None:
        return None, None
    run = _read_json(run_dir / RUN_NAME)
    if run is not None:
        run = _public_run(run)
        atomic_write_json(folder / RUN_NAME, run)
    released = _read_json(run_dir / IMPORT_NAME)
    if released is not None:
        released = {**released, "source": _public_paths(released.get("source"))}
        atomic_write_json(folder / IMPORT_NAME, released)
    return run, released


def _run_dir_of(ckpt: Path) -> Path | None:
    from .interop.layout import IMPORT_NAME
    from .training.state import RUN_NAME

    parent = ckpt.parent
    if (parent / RUN_NAME).is_file() or (parent / IMPORT_NAME).is_file():
        return parent
    return None


def stage_upload(
    source: Any,
    folder: str | os.PathLike[str],
    *,
    repo_id: str,
    model: str | None = None,
    eval_files: Sequence[str | os.PathLike[str]] = (),
    exports: Sequence[str] = (),
    license: str | None = None,
) -> Path:
    """Assemble in `folder` what `push_to_hub` uploads (see the module docstring).

    Layout: `README.md` (the model card), `final/` (`dgs_weights.safetensors`,
    `dgs_config.json`, `dgsnet_model.json`), `base_model/` (an imported released
    checkpoint's CLIP), `run.json` and `released_import.json` (local paths reduced to
    names), `eval/*.json` (the `dgsnet eval --json` files given or found in the run folder),
    `exports/<format>/` (with `exports`).

    Args:
        source: a run folder, a checkpoint folder, or a `DGSWrapper`.
        folder: the folder to fill (created; should be empty).
        repo_id: the repository the card names.
        model: the base model's spec, when the source does not record it.
        eval_files: `dgsnet eval --json` files to include.
        exports: formats to export into `exports/` (see `dgsnet.export`).
        license: the license named in the card (`None`: `other`, stated as not given).

    Returns:
        `folder`.
    """
    from .model_card import model_card
    from .training.run_folder import resolve_checkpoint as resolve_local
    from .wrapper import CONFIG_NAME, WEIGHTS_NAME, DGSWrapper
    from .wrapper.checkpoint import read_checkpoint_meta

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = None
    base_stored = False
    if isinstance(source, DGSWrapper):
        ckpt = stage_wrapper(source, out, model)
    else:
        src_ckpt = resolve_local(source)
        _copy_checkpoint(src_ckpt, out, (WEIGHTS_NAME, CONFIG_NAME, MODEL_INFO_NAME))
        ckpt = out / "final"
        if model is not None:
            write_model_info(ckpt, model)
        base_stored = _stage_base(src_ckpt, out, _read_json(ckpt / MODEL_INFO_NAME) or {})
        run_dir = _run_dir_of(src_ckpt)
    run, released = _stage_run_files(run_dir, out)
    evals = _stage_evals(out, _eval_files(run_dir, eval_files))
    for fmt in exports:
        from .export import export

        export(source if isinstance(source, DGSWrapper) else ckpt, fmt, out / "exports" / fmt)
    card = model_card(
        repo_id=repo_id,
        meta=read_checkpoint_meta(ckpt),
        model_info=_read_json(ckpt / MODEL_INFO_NAME) or {},
        run=run,
        released=released,
        evals=evals,
        exports=list(exports),
        base_stored=base_stored,
        license=license,
    )
    atomic_write_text(out / "README.md", card)
    return out


def push_to_hub(
    source: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    model: str | None = None,
    eval_files: Sequence[str | os.PathLike[str]] = (),
    exports: Sequence[str] = (),
    license: str | None = None,
) -> PushResult:
    """Upload a run folder (or a checkpoint folder or a wrapper) with a model card.

    The folder is assembled by `stage_upload` in a temporary directory; then
    `HfApi.create_repo(exist_ok=True)` (and `create_branch` for a `revision`) and one
    `HfApi.upload_folder` commit send it.

    Args:
        source: a run folder, a checkpoint folder, or a `DGSWrapper`.
        repo_id: `org/name` (or `hf-hub:org/name`).
        revision: the branch to upload to (created when missing; default: the main branch).
        private: create the repository as private (an existing one keeps its setting).
        token: a Hub token (default: huggingface_hub's login / `HF_TOKEN`).
        commit_message: the commit message.
        model: the base model's spec when the source does not record it.
        eval_files: `dgsnet eval --json` files to include (the run folder's are found).
        exports: export formats to include under `exports/` (e.g. `["onnx"]`).
        license: the license of the uploaded weights, for the card (e.g. `"mit"`).

    Returns:
        The repository, branch and files uploaded.

    Raises:
        ValueError: `repo_id` is not `org/name`.
    """
    repo, rev = parse_hub_id(repo_id)
    revision = revision or rev
    with tempfile.TemporaryDirectory(prefix="dgsnet-push-") as tmp:
        folder = stage_upload(
            source,
            Path(tmp) / "upload",
            repo_id=repo,
            model=model,
            eval_files=eval_files,
            exports=exports,
            license=license,
        )
        return upload_folder(
            folder,
            repo,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
        )
