"""`hf-hub:` ids resolve through huggingface_hub: downloaded from a local test Hub into a
temporary `HF_HOME` by huggingface_hub itself, then found in that cache with
`HF_HUB_OFFLINE=1`; `dgsnet predict` / `dgsnet eval` / `load_trained` / `export` accept them.

The Hub repository's content is exactly the folder `dgsnet push` would upload
(`dgsnet.hub.stage_upload`), so upload and download are tested as one round.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgsnet.evaluation import load_trained
from dgsnet.hub import is_hub_id, parse_hub_id, resolve_checkpoint, stage_upload
from dgsnet.io import CheckpointError
from tests.export.conftest import REPO

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full = {**keep, "PYTHONPATH": os.fspath(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def hub_cache(oc_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """A staged upload of the open_clip run, ready to be served (module scope)."""
    base = tmp_path_factory.mktemp("hubsrc")
    upload = stage_upload(oc_run, base / "upload", repo_id="org/tiny-dgs")
    return upload


def _download(endpoint: str, home: Path, target: str, cwd: Path) -> str:
    code = f"from dgsnet.hub import resolve_checkpoint; print(resolve_checkpoint({target!r}))"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": os.fspath(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = _run(["-c", code], env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_parse_and_detect_hub_ids(tmp_path):
    assert parse_hub_id("hf-hub:org/name") == ("org/name", None)
    assert parse_hub_id("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("org/name") == ("org/name", None)
    for bad in ("hf-hub:org", "hf-hub:org/na/me", "hf-hub:../x", "hf-hub:"):
        with pytest.raises(ValueError, match="not a Hugging Face repository id"):
            parse_hub_id(bad)
    assert is_hub_id("hf-hub:org/name") and is_hub_id("org/name")
    (tmp_path / "org" / "name").mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert not is_hub_id("org/name")  # a local folder of that name wins
    finally:
        os.chdir(cwd)


def test_download_then_offline_from_the_cache(hub_server, hub_cache, oc_run, bench, tmp_path):
    endpoint, repos = hub_server
    commit = repos.add("org/tiny-dgs", hub_cache, revisions=("main", "v1"))
    home = tmp_path / "hf_home"
    online = _download(endpoint, home, "hf-hub:org/tiny-dgs", tmp_path)
    # huggingface_hub laid the cache out itself: snapshots/<commit>, refs/main, blobs/
    storage = home / "hub" / "models--org--tiny-dgs"
    assert Path(online) == storage / "snapshots" / commit
    assert (storage / "refs" / "main").read_text() == commit
    assert any(m == "HEAD" and "/resolve/" in p for m, p in repos.requests)
    served = sorted(
        p.relative_to(hub_cache).as_posix() for p in hub_cache.rglob("*") if p.is_file()
    )
    got = sorted(p.relative_to(online).as_posix() for p in Path(online).rglob("*") if p.is_file())
    assert got == served
    # a revision by tag
    assert _download(endpoint, home, "hf-hub:org/tiny-dgs@v1", tmp_path) == online
    n_requests = len(repos.requests)

    # offline: the same folder, no request reaches the server
    offline = {"HF_HOME": os.fspath(home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": endpoint}
    images = sorted(os.fspath(p) for p in (bench / "test").rglob("*.png"))
    proc = _run(
        ["-m", "dgsnet", "predict", "hf-hub:org/tiny-dgs", *images, "--device", "cpu"],
        offline,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = _run(
        ["-m", "dgsnet", "predict", os.fspath(oc_run), *images, "--device", "cpu"], {}, tmp_path
    )
    assert local.returncode == 0, local.stderr[-3000:]
    assert proc.stdout == local.stdout and len(proc.stdout.splitlines()) == len(images) + 1
    proc = _run(
        [
            "-m",
            "dgsnet",
            "eval",
            "hf-hub:org/tiny-dgs@v1",
            os.fspath(bench / "test"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
        ],
        offline,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "biggan" in proc.stdout
    assert len(repos.requests) == n_requests

    # offline, a repository that was never downloaded: one clear error line, exit status 2
    proc = _run(["-m", "dgsnet", "predict", "hf-hub:org/unknown", images[0]], offline, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith(
        "dgsnet: error: hf-hub:org/unknown: HF_HUB_OFFLINE is set and it is not in the local cache"
    ), err
    assert "Traceback" not in proc.stderr


def test_in_process_offline_resolution_and_load(
    hub_server, hub_cache, oc_run, tmp_path, monkeypatch
):
    """`resolve_checkpoint(..., cache_dir=)` and `load_trained("hf-hub:...")` in this process,
    offline (huggingface_hub's own switch), from a cache huggingface_hub filled."""
    import huggingface_hub.constants as hf_constants

    endpoint, repos = hub_server
    commit = repos.add("org/tiny-dgs", hub_cache)
    home = tmp_path / "hf_home"
    _download(endpoint, home, "hf-hub:org/tiny-dgs", tmp_path)
    cache = home / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    path = resolve_checkpoint("org/tiny-dgs", cache_dir=cache)
    assert path == cache / "models--org--tiny-dgs" / "snapshots" / commit
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("hf-hub:org/other", cache_dir=cache)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("org/tiny-dgs", revision="no-such-branch", cache_dir=cache)
    # load_trained through the hub id gives the local run's predictions
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", os.fspath(cache))
    hub_wrapper, _ = load_trained("hf-hub:org/tiny-dgs")
    local_wrapper, _ = load_trained(oc_run)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hub_wrapper.predict(x), local_wrapper.predict(x))


def test_export_from_a_hub_id(hub_server, hub_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from dgsnet.export import export

    endpoint, repos = hub_server
    repos.add("org/tiny-dgs", hub_cache)
    home = tmp_path / "hf_home"
    _download(endpoint, home, "hf-hub:org/tiny-dgs", tmp_path)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", os.fspath(home / "hub"))
    result = export("hf-hub:org/tiny-dgs", "open_clip", tmp_path / "oc")
    assert result["check"]["max_abs_score_diff"] <= 1e-5
    assert result["source"]["checkpoint"].endswith("final")


def test_a_local_path_is_returned_as_is(oc_run, tmp_path):
    assert resolve_checkpoint(oc_run) == oc_run
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing" / "x" / "y")


def test_wrapper_from_pretrained_with_a_hub_id(
    hub_server, hub_cache, oc_run, tmp_path, monkeypatch
):
    """`DGSWrapper.from_pretrained("org/name", model, revision=...)` reads the pushed run's
    `final/` from huggingface_hub's cache, offline."""
    import huggingface_hub.constants as hf_constants

    from dgsnet import DGSWrapper
    from dgsnet.models import build_model

    endpoint, repos = hub_server
    repos.add("org/tiny-dgs", hub_cache, revisions=("main", "v1"))
    home = tmp_path / "hf_home"
    _download(endpoint, home, "hf-hub:org/tiny-dgs@v1", tmp_path)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", os.fspath(home / "hub"))
    bundle = build_model("tiny:32")
    hub = DGSWrapper.from_pretrained("org/tiny-dgs", bundle.model, bundle.tokenizer, revision="v1")
    local, _ = load_trained(oc_run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(hub.eval().predict(x), local.predict(x))
    with pytest.raises(
        CheckpointError,
        match=r"from_pretrained\('hf-hub:org/tiny-dgs'\) needs the base model.*load_trained",
    ):
        DGSWrapper.from_pretrained("hf-hub:org/tiny-dgs", revision="v1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        DGSWrapper.from_pretrained("org/never-downloaded", bundle.model)
