"""`dgsnet export` on the command line, and the export's refusals (one clear error each;
nothing left behind)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from dgsnet.cli import main
from dgsnet.evaluation import load_trained
from dgsnet.export import ExportError, export, load_source
from dgsnet.export.source import ExportSource

pytestmark = pytest.mark.usefixtures("one_thread")


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[0]


def test_import_released_then_export_in_two_commands(tmp_path, capsys):
    """The authors' released weights become an ONNX detector in two commands."""
    from tests.helpers.released_files import stage2_file

    path = tmp_path / "model_epoch_step2.pth"
    torch.save(stage2_file(seed=3), path)
    run = tmp_path / "released"
    assert main(["import-released", os.fspath(path), "-o", os.fspath(run), "-q"]) == 0
    out = tmp_path / "onnx"
    assert main(["export", os.fspath(run), "--format", "onnx", "-o", os.fspath(out)]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"dgsnet: wrote {out} (onnx, ") and "of dgsnet's" in line
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["check"]["max_abs_score_diff"] <= 1e-4
    assert manifest["onnx"]["opset"] == 20
    assert manifest["source"]["released_import"]["stage"] == 2
    pre = json.loads((out / "preprocessing.json").read_text())
    assert [s["op"] for s in pre["steps"]] == ["patch_selection"]
    assert pre["steps"][0]["patch_size"] == 8 and pre["steps"][0]["n_low"] == 24


@pytest.mark.parametrize("fmt", ["torch.export", "pt2"])
def test_torch_export_is_pt2(oc_run, tmp_path, fmt):
    out = tmp_path / "p"
    assert main(["export", os.fspath(oc_run), "-f", fmt, "-o", os.fspath(out), "-q"]) == 0
    assert (out / "detector.pt2").is_file()
    assert json.loads((out / "export.json").read_text())["export_format"] == "pt2"


def test_no_check_writes_without_loading(oc_run, tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            [
                "export",
                os.fspath(oc_run),
                "-f",
                "open_clip",
                "-o",
                os.fspath(out),
                "--no-check",
                "-q",
            ]
        )
        == 0
    )
    assert json.loads((out / "export.json").read_text())["check"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-f", "open_clip", "--opset", "18"], "--opset applies to --format onnx only"),
        (["-f", "onnx", "--opset", "9"], "--opset must be 18 or more"),
        (["-f", "pt2", "--peft-base", "hf"], "--peft-base applies to --format peft only"),
        (["-f", "onnx", "--open-clip-name", "ViT-B-32"], "--open-clip-name applies to"),
        (["-f", "open_clip", "--tolerance", "-1"], "--tolerance must be a positive number"),
        (
            ["-f", "open_clip", "--open-clip-name", "No-Such-Net"],
            "'No-Such-Net' is not a built-in open_clip architecture",
        ),
    ],
)
def test_bad_options_one_error_line(oc_run, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["export", os.fspath(oc_run), *argv, "-o", os.fspath(out)]) == 2
    assert message in _err(capsys)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_existing_output_and_missing_source(oc_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", os.fspath(oc_run), "-f", "pt2", "-o", os.fspath(out)]) == 2
    assert f"{out} exists; choose a new output folder" in _err(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", os.fspath(tmp_path / "nope"), "-f", "pt2", "-o", os.fspath(out)]) == 2
    assert "does not exist" in _err(capsys)
    # a save_pretrained folder without a recorded model names the --model option
    from dgsnet import DGSConfig, DGSWrapper
    from tests.helpers import open_clip_tokenizer, tiny_open_clip

    ckpt = DGSWrapper(tiny_open_clip(), open_clip_tokenizer(), DGSConfig()).save_pretrained(
        tmp_path / "ckpt"
    )
    assert main(["export", os.fspath(ckpt), "-f", "pt2", "-o", os.fspath(tmp_path / "x")]) == 2
    assert "--model" in _err(capsys)


def test_a_failed_check_leaves_no_folder(oc_run, tmp_path):
    """A config that does not rebuild the model (here: QuickGELU instead of GELU) is caught
    by the check; the folder is not put in place."""
    src = load_source(oc_run)
    from dgsnet.export.merge import merged_copy
    from dgsnet.export.open_clip import config_from_modules

    cfg = config_from_modules(merged_copy(src.wrapper.model))
    cfg["quick_gelu"] = True
    with pytest.raises(ExportError, match="does not reproduce the detector"):
        export(src, "open_clip", tmp_path / "bad", open_clip_config=cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_a_clipmodel_equivalent(tmp_path):
    from dgsnet import DGSConfig, DGSWrapper
    from tests.helpers import open_clip_tokenizer, tiny_open_clip

    model = tiny_open_clip(layers=1, layer_scale=0.1)
    w = DGSWrapper(model, open_clip_tokenizer(), DGSConfig(lora_dropout=0.0))
    with pytest.raises(ExportError, match="no CLIPModel equivalent: it uses LayerScale"):
        export(w, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unknown_format_and_option(oc_run, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export(oc_run, "tflite", tmp_path / "a")
    with pytest.raises(ExportError, match=r"unknown option\(s\) for the pt2 format: \['opset'\]"):
        export(oc_run, "pt2", tmp_path / "b", opset=18)


def test_onnx_without_its_libraries(oc_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"needs onnxscript: pip install 'dgsnet\[export\]'"):
        export(oc_run, "onnx", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_a_wrapper_in_memory(tmp_path):
    """A wrapper around a hand-built open_clip model: its config is read from its modules
    and the export is checked like any other."""
    from dgsnet import DGSConfig, DGSWrapper
    from tests.helpers import make_lora_nonzero, open_clip_tokenizer, tiny_open_clip

    w = DGSWrapper(
        tiny_open_clip(),
        open_clip_tokenizer(),
        DGSConfig(lora_dropout=0.0, normalize_features=True),
    )
    make_lora_nonzero(w, scale=0.2)
    with torch.no_grad():
        w.image_head.weight.normal_(0, 2.0)
    result = export(w, "open_clip", tmp_path / "oc")
    assert result["check"]["max_abs_score_diff"] <= 1e-5
    head = json.loads((tmp_path / "oc" / "head.json").read_text())
    assert head["normalize_features"] is True and head["linear"] is True
    pre = json.loads((tmp_path / "oc" / "preprocessing.json").read_text())
    assert pre["source"].startswith("default: CLIP preprocessing")
    assert pre["output"]["normalize_features"] is True


def test_export_a_wrapper_with_its_own_head(tmp_path):
    """A head that is not an nn.Linear: ONNX and .pt2 hold it inside the detector; the other
    formats save its state dict and head.json names its class for the user to supply."""
    from dgsnet import DGSConfig, DGSWrapper
    from tests.helpers import make_lora_nonzero, open_clip_tokenizer, tiny_open_clip

    torch.manual_seed(3)
    head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    w = DGSWrapper(
        tiny_open_clip(), open_clip_tokenizer(), DGSConfig(lora_dropout=0.0), image_head=head
    )
    make_lora_nonzero(w, scale=0.2)
    result = export(w, "pt2", tmp_path / "pt2")
    assert result["check"]["max_abs_score_diff"] <= 1e-5
    module = torch.export.load(os.fspath(tmp_path / "pt2" / "detector.pt2")).module()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(module(x), w.predict(x), atol=1e-5)
    export(w, "open_clip", tmp_path / "oc")
    info = json.loads((tmp_path / "oc" / "head.json").read_text())
    assert info["linear"] is False and info["class"] == "torch.nn.modules.container.Sequential"
    assert info["tensors"] == {
        "0.weight": [8, 16],
        "0.bias": [8],
        "2.weight": [1, 8],
        "2.bias": [1],
    }
    assert "build your own module of this class" in info["note"]
    from safetensors.torch import load_file

    rebuilt = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    rebuilt.load_state_dict(load_file(os.fspath(tmp_path / "oc" / "head.safetensors")))
    for a, b in zip(rebuilt.parameters(), head.parameters(), strict=True):
        assert torch.equal(a, b)


def test_manifest_lists_every_file_with_its_hash(oc_run, tmp_path):
    from dgsnet.io import sha256_file

    out = tmp_path / "oc"
    result = export(oc_run, "open_clip", out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(result.files) == files - {"export.json"}
    for name, entry in result.files.items():
        assert entry["bytes"] == (out / name).stat().st_size
        assert entry["sha256"] == sha256_file(out / name)
    assert result.path == out
    assert result["source"]["config"] == load_trained(oc_run)[0].config.to_dict()


def test_export_does_not_change_the_wrapper(oc_run, tmp_path):
    src = load_source(oc_run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = src.wrapper.predict(x)
    params = {n: p.detach().clone() for n, p in src.wrapper.named_parameters()}
    for fmt in ("open_clip", "peft", "pt2"):
        export(src, fmt, tmp_path / fmt)
    assert torch.equal(src.wrapper.predict(x), before)
    for n, p in src.wrapper.named_parameters():
        assert torch.equal(p, params[n]), n
    assert isinstance(src, ExportSource) and Path(src.checkpoint).name == "final"
