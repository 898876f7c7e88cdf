"""`dgsnet import-released` checks the values of a released file, not only its keys and
shapes: non-finite and non-floating weights, sparse and meta tensors, views that declare more
values than the file stores, an alpha that overflows the LoRA update. It refuses hostile
pickles saying why, names a symbolic link given as the output folder, and cleans up what a
killed import left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgsnet.cli import main
from dgsnet.interop import import_released, read_released
from dgsnet.io import CheckpointError
from tests.helpers.released_files import stage1_file, stage2_file

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
PRISTINE = "clip_model_frozen.clip_model_frozen."
HEAD = "clip_model_frozen.img_frozen_fc."
LORA_B = "clip_model.visual.transformer.resblocks.0.attn.q_proj.w_lora_B"


def save(tmp_path: Path, sd: dict, name: str = "m.pth") -> Path:
    path = tmp_path / name
    torch.save(sd, path)
    return path


def refused(path: Path, **kwargs) -> str:
    """The message of the `CheckpointError` that reading `path` raises (one line)."""
    with pytest.raises(CheckpointError) as err:
        read_released(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    return code, [x for x in capsys.readouterr().err.splitlines() if x.strip()]


# -- item 5: values, not only keys and shapes --------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (PRISTINE + "visual.proj", float("inf"), "holds NaN or Inf (1 of"),
        (PRISTINE + "ln_final.weight", float("nan"), "holds NaN or Inf (1 of"),
        ("img_fc.weight", float("nan"), "holds NaN or Inf (1 of"),
        (HEAD + "bias", float("-inf"), "holds NaN or Inf (1 of 1 values)"),
    ],
)
def test_non_finite_weights_are_refused_at_import_naming_the_key(tmp_path, key, value, expected):
    sd = stage2_file()
    keys = [key]
    if key.startswith(PRISTINE):  # the student holds the same base weight
        keys.append("clip_model." + key[len(PRISTINE) :])
    for k in keys:
        sd[k] = sd[k].clone()
        sd[k].view(-1)[0] = value
    path = save(tmp_path, sd)
    message = refused(path)
    assert expected in message and any(repr(k) in message for k in keys), message
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        import_released(path, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [(torch.int32, "torch.int32"), (torch.bool, "torch.bool"), (torch.complex64, "complex64")],
)
def test_integer_bool_and_complex_weights_are_refused_not_cast(tmp_path, dtype, shown):
    sd = stage2_file()
    key = PRISTINE + "visual.ln_post.bias"
    sd[key] = sd[key].to(dtype)
    message = refused(save(tmp_path, sd))
    assert repr(key) in message and shown in message and "floating point" in message


def test_a_nan_lora_factor_is_named_not_blamed_on_alpha(tmp_path):
    sd = stage2_file()
    sd[LORA_B] = sd[LORA_B].clone()
    sd[LORA_B][0, 0] = float("nan")
    message = refused(save(tmp_path, sd))
    assert repr(LORA_B) in message and "NaN or Inf" in message
    assert "alpha" not in message


def test_openai_integer_entries_are_still_accepted(tmp_path):
    sd, _, _ = stage1_file()
    sd["clip_model_frozen.input_resolution"] = torch.tensor(56)
    assert read_released(save(tmp_path, sd)).info.stage == 1


# -- item 6: an alpha that overflows the update ------------------------------------------------


def test_an_alpha_of_1e308_is_refused_by_the_library_and_the_command(tmp_path, capsys):
    path = save(tmp_path, stage2_file())
    code, lines = cli(["import-released", os.fspath(path), "-o", os.fspath(tmp_path / "r")], capsys)
    assert code == 0  # the released alpha: fine
    code, lines = cli(
        ["import-released", os.fspath(path), "-o", os.fspath(tmp_path / "big"), "--alpha", "1e308"],
        capsys,
    )
    assert code == 2 and len(lines) == 1 and "--alpha must be a number in (0, 10000]" in lines[0]
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 10000\]"):
        read_released(path, alpha=1e308)


def test_lora_factors_whose_update_overflows_are_refused(tmp_path):
    sd = stage2_file()
    a_key = LORA_B.replace("w_lora_B", "w_lora_A")
    sd[LORA_B] = torch.full_like(sd[LORA_B], 1e30)
    sd[a_key] = torch.full_like(sd[a_key], 1e30)
    message = refused(save(tmp_path, sd))
    assert "overflows torch.float32" in message and "q_proj.weight" in message


# -- items 11 and 12: what a tensor declares against what the file stores -----------------------


def test_a_view_repeating_one_stored_value_is_refused_before_anything_is_built(tmp_path):
    sd = stage2_file()
    key = HEAD + "weight"
    sd[key] = torch.full((1, 1), 0.1).expand(1, 32)  # stride (0, 0): 4 bytes stored, 128 declared
    message = refused(save(tmp_path, sd))
    assert repr(key) in message and "declares shape (1, 32) (128 bytes)" in message
    assert "stores 4 bytes" in message


def test_a_view_declaring_1e9_rows_is_refused_without_allocating_them(tmp_path):
    """The file is small; its positional embedding claims 1 + 31623^2 (about 10^9) rows, 512 GB
    in float32. The import runs in a process limited to 4 GiB of address space."""
    sd, _, _ = stage1_file()
    key = "clip_model_frozen.visual.positional_embedding"
    rows = 1 + 31623**2
    sd[key] = sd[key][:1].expand(rows, sd[key].shape[1])
    path = save(tmp_path, sd)
    assert path.stat().st_size < 40 * 2**20
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from dgsnet.cli import main\n"
        "sys.exit(main(['import-released', sys.argv[1], '-o', sys.argv[2]]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, os.fspath(path), os.fspath(tmp_path / "run")],
        env={**os.environ, "PYTHONPATH": os.fspath(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"declares shape ({rows}, 128)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_sparse_and_meta_tensors_are_refused_naming_the_key(tmp_path, kind):
    sd = stage2_file()
    key = "text_fc.weight"
    sd[key] = sd[key].to_sparse() if kind == "sparse" else torch.empty(1, 32, device="meta")
    message = refused(save(tmp_path, sd))
    assert repr(key) in message and kind in message


# -- item 13: what a killed import leaves behind ------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_import_leaves_a_staging_folder_that_the_next_import_removes(tmp_path):
    path = save(tmp_path, stage2_file())
    out = tmp_path / "run"
    # an import that stops (as if killed) once the base model is in its staging folder
    code = (
        "import os, sys, time\n"
        "import dgsnet.interop.run_folder as rf\n"
        "def stop(*a, **k):\n"
        "    print('staged', flush=True); time.sleep(600)\n"
        "rf._write_model_info = stop\n"
        "rf.import_released(sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, os.fspath(path), os.fspath(out)],
        env={**os.environ, "PYTHONPATH": os.fspath(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-")]
    assert len(left) == 1 and (left[0] / "base_model").is_dir()  # the partial copy
    # a staging folder of a live process is another import under way: kept
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = tmp_path / f".run.tmp-{socket.gethostname()}-{sleeper.pid}"
        live.mkdir()
        older = tmp_path / f".run.tmp-{_dead_pid()}"  # the name without the host
        older.mkdir()
        import_released(path, out)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (out / "final").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-")) == [
        live.name
    ]


# -- item 19: a hostile pickle ------------------------------------------------------------------


class Payload:
    """Unpickling it would create a file (it never runs: safe loading refuses it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_hostile_pickle_is_refused_saying_it_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = save(tmp_path, {**stage2_file(), "img_fc.bias": Payload(marker)})
    message = refused(path)
    assert message.startswith(f"{path} is refused: it holds Python objects"), message
    assert "would run code" in message[:200], message
    assert re.search(r"\(it names [\w.]+", message), message  # from torch's report
    assert not marker.exists()


# -- item 20: --out is a symbolic link ----------------------------------------------------------


@pytest.mark.parametrize("target", ["nowhere/deeper", "nowhere"])
def test_a_dangling_symlink_as_out_is_named_not_the_staging_folder(tmp_path, capsys, target):
    path = save(tmp_path, stage2_file())
    link = tmp_path / "link"
    link.symlink_to(tmp_path / target)
    code, lines = cli(["import-released", os.fspath(path), "-o", os.fspath(link)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{link} is a symbolic link" in lines[0] and ".tmp" not in lines[0]
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
