"""Fixtures of the export and hub tests: trained tiny runs (open_clip, Hugging Face, an
imported released checkpoint), a fresh-process runner that blocks dgsnet, and a local
Hugging Face Hub server for huggingface_hub to download from.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import torch

from dgsnet.cli import main
from tests.helpers import make_bench, write_tiny_hf_base
from tests.helpers.cli import tiny_train_flags
from tests.helpers.released_files import stage2_file

REPO = Path(__file__).resolve().parents[2]
FAST = tiny_train_flags(model=None)


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training tree (two subsets, captions) and a test tree (one subset, no captions)."""
    base = tmp_path_factory.mktemp("export-data")
    make_bench(base / "train", subsets=("progan", "sd14"), n=4)
    make_bench(base / "test", subsets=("biggan",), n=3, seed=3, captions=False)
    return base


@pytest.fixture(scope="session")
def oc_run(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dgsnet train --model tiny` (open_clip; the reference preset: rsLoRA on q/k/v)."""
    out = tmp_path_factory.mktemp("oc") / "run"
    args = ["train", os.fspath(bench / "train"), "--out", os.fspath(out), "--model", "tiny"]
    assert main([*args, *FAST]) == 0
    return out


@pytest.fixture(scope="session")
def hf_run(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dgsnet train --model hf:<tiny CLIPModel folder>`."""
    pytest.importorskip("transformers")
    base = write_tiny_hf_base(tmp_path_factory.mktemp("hfbase"))
    out = tmp_path_factory.mktemp("hf") / "run"
    args = ["train", os.fspath(bench / "train"), "--out", os.fspath(out), "--model", f"hf:{base}"]
    assert main([*args, *FAST]) == 0
    return out


@pytest.fixture(scope="session")
def standard_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `save_pretrained` folder (no run folder, no recorded model): the `tiny:32` model with
    the default LoRA targets (q/k/v and the MLP's c_fc/c_proj), standard scaling alpha/r
    with alpha != r, non-zero LoRA and head."""
    from dgsnet import DGSConfig, DGSWrapper
    from dgsnet.models import build_model

    bundle = build_model("tiny:32")
    cfg = DGSConfig(lora_rank=4, lora_alpha=10.0, lora_scaling="standard", lora_dropout=0.0)
    w = DGSWrapper(bundle.model, bundle.tokenizer, cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in w.named_trainable_parameters():
            if "lora_B" in name or "image_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("std") / "ckpt"
    w.save_pretrained(out)
    return out


# -- released checkpoints (the layout of the DGS-Net code's model_epoch_step2.pth) ----------


@pytest.fixture(scope="session")
def released_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dgsnet import-released model_epoch_step2.pth -o RUN` on a synthetic released file."""
    base = tmp_path_factory.mktemp("released")
    path = base / "model_epoch_step2.pth"
    torch.save(stage2_file(), path)
    out = base / "run"
    assert main(["import-released", os.fspath(path), "-o", os.fspath(out), "--quiet"]) == 0
    return out


# -- a fresh process without dgsnet ----------------------------------------------------------

BLOCK_DGSNET = """
import sys
class _NoDgsnet:
    def find_spec(self, name, path=None, target=None):
        if name == "dgsnet" or name.startswith("dgsnet."):
            raise ImportError("dgsnet is blocked in this process")
        return None
sys.meta_path.insert(0, _NoDgsnet())
"""

END_CHECK = """
assert "dgsnet" not in sys.modules, sorted(m for m in sys.modules if m.startswith("dgsnet"))
print("DGSNET-NOT-IMPORTED")
"""


def run_without_dgsnet(code: str, *args: str, cwd: Path) -> str:
    """Run `code` in a fresh Python process where importing dgsnet raises; check at the end
    that no dgsnet module was loaded. Returns its standard output."""
    script = cwd / "_no_dgsnet.py"
    script.write_text(BLOCK_DGSNET + code + END_CHECK)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, os.fspath(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DGSNET-NOT-IMPORTED" in proc.stdout
    return proc.stdout


# -- a local Hugging Face Hub -------------------------------------------------------------------


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubRepos:
    """Repositories served by `hub_server`: commits of files, and refs (branches, tags)."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []

    def add(self, repo: str, folder: Path, revisions: tuple[str, ...] = ("main",)) -> str:
        """Serve the files of `folder` as one commit of `repo` under `revisions`."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha1(repo.encode())
        for name, data in files.items():
            digest.update(name.encode() + hashlib.sha256(data).digest())
        commit = digest.hexdigest()
        self.commits[commit] = files
        for rev in revisions:
            self.refs[(repo, rev)] = commit
        return commit


def _handler(repos: HubRepos) -> type[BaseHTTPRequestHandler]:
    """The endpoints `snapshot_download` calls: repo info at a revision, the file tree of a
    commit, and file metadata (HEAD) and content (GET) under `/resolve/`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _commit(self, repo: str, rev: str) -> str | None:
            return rev if rev in repos.commits else repos.refs.get((repo, rev))

        def _route(self, head: bool) -> None:
            repos.requests.append((self.command, self.path))
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            missing = {"X-Error-Code": "RepoNotFound"}
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo, commit = "/".join(parts[2:4]), self._commit("/".join(parts[2:4]), parts[5])
                if commit is None:
                    return self._send(404, b'{"error": "not found"}', missing, head)
                files = repos.commits[commit]
                if parts[4] == "revision":
                    info: Any = {
                        "id": repo,
                        "sha": commit,
                        "siblings": [{"rfilename": p} for p in files],
                    }
                else:
                    info = [
                        {"type": "file", "oid": _blob_id(d), "size": len(d), "path": p}
                        for p, d in files.items()
                    ]
                return self._send(
                    200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head
                )
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = "/".join(parts[:2])
                commit = self._commit(repo, parts[3])
                data = repos.commits[commit].get("/".join(parts[4:])) if commit else None
                if data is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                headers = {"X-Repo-Commit": commit or "", "ETag": f'"{_blob_id(data)}"'}
                return self._send(200, data, headers, head)
            return self._send(404, b"", {}, head)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._route(False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(True)

    return Handler


@pytest.fixture
def hub_server() -> Iterator[tuple[str, HubRepos]]:
    """`(endpoint URL, repos)` of a local Hub answering huggingface_hub's download calls."""
    repos = HubRepos()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", repos
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
