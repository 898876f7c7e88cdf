"""``dgsnet train --preset aigibench-setting2`` (the paper's training run as one command), its
JSON twin ``examples/presets/aigibench-setting2.json``, option precedence (preset < --config <
flags), and ``dgsnet eval`` over test roots laid out like the three benchmarks (tiny model)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest

from dgsnet import DGSConfig
from dgsnet.cli import main, train_settings
from dgsnet.presets import TRAIN_PRESETS, get_preset
from tests.helpers import make_bench

REPO = Path(__file__).resolve().parents[2]
PRESET_FILE = REPO / "examples" / "presets" / "aigibench-setting2.json"
SETTING2_SUBSETS = ("car", "cat", "chair", "horse", "sdv1.4")

# the released training setup (HorizonTEL/DGS-Net options/*.py and its training command;
# the table in docs/paper-setting.md names the file of every value)
PAPER = {
    "model": "ViT-L-14@openai",
    "pretrained": None,
    "transform": "patch-selection",
    "flip": True,
    "stage": "both",
    "stage1_epochs": 3,
    "epochs": 1,
    "batch_size": 32,
    "lr": 1e-4,
    "stage1_lr": 1e-4,
    "lr_step": 10,
    "lr_gamma": 0.9,
    "captions": None,  # <parent>/<split>_text/<split>.json, looked up per root
}
PAPER_DGS = {
    "lora_targets": ["q_proj", "k_proj", "v_proj"],
    "lora_layers": None,
    "lora_rank": 6,
    "lora_alpha": 6.0,
    "lora_dropout": 0.8,
    "suppression": True,
    "alignment": True,
    "align_weight": 0.2,
    "align_scale": "reference",
    "order": "align_then_project",
}
# keys that name where the settings came from, not what they are
PROVENANCE = ("preset", "config", "dgs", "preset_overrides")

TINY = ["--model", "tiny:56", "--workers", "0", "--batch-size", "4", "--stage1-epochs", "1"]
TINY += ["--lora-dropout", "0.1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def settings(*argv: str) -> dict:
    return train_settings([*argv, "data/train", "-o", "runs/x"])


def without(d: dict, keys=PROVENANCE) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[0]


# ---------------------------------------------------------------------------------------------
# the settings, without running anything
# ---------------------------------------------------------------------------------------------


def test_preset_selects_the_reference_training_setting():
    s = settings("--preset", "aigibench-setting2")
    assert s["preset"] == "aigibench-setting2" and s["preset_overrides"] == []
    assert {k: s[k] for k in PAPER} == PAPER
    assert {k: s["dgs_config"][k] for k in PAPER_DGS} == PAPER_DGS
    assert s["dgs_config"] == DGSConfig.reference().to_dict()


def test_json_file_and_named_preset_give_identical_settings():
    """The shipped JSON spells the setting out; it must not drift from the named preset."""
    data = json.loads(PRESET_FILE.read_text())
    # self-contained: every option the preset sets is written in the file
    assert set(get_preset("aigibench-setting2").options) <= set(data)
    named = settings("--preset", "aigibench-setting2")
    from_file = settings("--config", os.fspath(PRESET_FILE))
    assert without(from_file) == without(named)
    assert from_file["dgs_config"] == named["dgs_config"]
    assert from_file["preset_overrides"] == []
    # and the file layered on the preset changes nothing either
    both = settings("--config", os.fspath(PRESET_FILE), "--preset", "aigibench-setting2")
    assert without(both) == without(named) and both["preset_overrides"] == []


def test_existing_presets_are_unchanged():
    default = settings()
    assert default["preset"] == "reference" and default["preset_overrides"] == []
    assert default["transform"] == "model"  # only the whole-setting preset picks patch-selection
    assert default["dgs_config"] == DGSConfig.reference().to_dict()
    assert without(settings("--preset", "reference")) == without(default)
    library = settings("--preset", "library")
    assert library["dgs_config"] == DGSConfig().to_dict()
    assert without(library, (*PROVENANCE, "dgs_config")) == without(
        default, (*PROVENANCE, "dgs_config")
    )
    assert set(TRAIN_PRESETS) == {"reference", "library", "aigibench-setting2"}


def test_precedence_preset_then_config_then_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "preset": "aigibench-setting2",
                "batch_size": 8,
                "transform": "model",
                "dgs": {"lora_rank": 2},
            }
        )
    )
    s = settings("--config", os.fspath(cfg), "--batch-size", "4", "--lora-dropout", "0.5")
    assert s["preset"] == "aigibench-setting2"  # from the file
    assert s["batch_size"] == 4  # flag > file
    assert s["transform"] == "model"  # file > preset
    assert s["model"] == "ViT-L-14@openai" and s["stage1_epochs"] == 3  # preset
    assert s["dgs_config"]["lora_rank"] == 2 and s["dgs_config"]["lora_dropout"] == 0.5
    assert s["dgs_config"]["lora_targets"] == ["q_proj", "k_proj", "v_proj"]
    assert set(s["preset_overrides"]) == {
        "batch_size",
        "transform",
        "dgs.lora_rank",
        "dgs.lora_dropout",
    }
    # a --preset flag beats the file's "preset"
    r = settings("--config", os.fspath(cfg), "--preset", "reference")
    assert r["preset"] == "reference" and r["batch_size"] == 8
    assert r["transform"] == "model" and set(r["preset_overrides"]) == {"dgs.lora_rank"}


def test_bad_preset_names(tmp_path, capsys):
    assert main(["train", "--preset", "paper", "x", "-o", "y"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "setting2"}))
    assert main(["train", "--config", os.fspath(cfg), "x", "-o", "y"]) == 2
    line = err_line(capsys)
    assert "preset must be one of" in line and "aigibench-setting2" in line


# ---------------------------------------------------------------------------------------------
# end to end: train with the preset, evaluate on the three benchmark layouts
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("paper")
    # AIGIBench Setting-II: train/{car,cat,chair,horse,sdv1.4}/{0_real,1_fake}, captions in
    # train_text/train.json beside it
    make_bench(base / "AIGIBench" / "train", subsets=SETTING2_SUBSETS, n=2, size=64)
    # UniversalFakeDetect: <subset>/{0_real,1_fake}
    make_bench(base / "UniversalFakeDetect", ("dalle", "glide_100_10", "ldm_200"), 2, 64, seed=5)
    # AIGCDetectBenchmark: some subsets hold categories (progan/<category>/{0_real,1_fake})
    aigcdb = base / "AIGCDetectBenchmark"
    make_bench(aigcdb / "progan", ("airplane", "car"), 2, 64, seed=6, captions=False)
    make_bench(aigcdb, ("Glide", "whichfaceisreal"), 2, 64, seed=7, captions=False)
    # AIGIBench test: <subset>/{0_real,1_fake}
    make_bench(base / "AIGIBench" / "test", ("FLUX1-dev", "SD3", "SocialRF"), 2, 64, seed=8)
    return base


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    root = os.fspath(data / "AIGIBench" / "train")
    argv = ["--preset", "aigibench-setting2", root, "-o", os.fspath(out), *TINY]
    assert main(["train", *argv]) == 0
    return out


def test_preset_trains_end_to_end_and_records_its_settings(trained, data):
    root = os.fspath(data / "AIGIBench" / "train")
    run = json.loads((trained / "run.json").read_text())
    options = run["options"]
    argv = ["--preset", "aigibench-setting2", root, "-o", os.fspath(trained), *TINY]
    assert options == json.loads(json.dumps(train_settings(argv)))
    # the reference setting except what the command line overrode
    changed = {"model": "tiny:56", "batch_size": 4, "stage1_epochs": 1}
    assert {k: options[k] for k in PAPER} == {**PAPER, **changed}
    assert options["dgs_config"] == {**DGSConfig.reference().to_dict(), "lora_dropout": 0.1}
    assert options["preset_overrides"] == [
        "model",
        "stage1_epochs",
        "batch_size",
        "dgs.lora_dropout",
    ]
    assert options["preset"] == "aigibench-setting2"
    assert options["transform"] == "patch-selection" and options["flip"] is True
    assert run["training"]["config"] == options["dgs_config"]
    model = json.loads((trained / "final" / "dgsnet_model.json").read_text())
    assert model["transform"] == "patch-selection" and model["spec"] == "tiny:56"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["global_step"] == 5  # 20 images, batch 4, one stage-2 epoch


def _markdown_rows(block: str) -> dict[str, list[str]]:
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| subset") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_eval_over_the_three_benchmark_layouts(trained, data, tmp_path, capsys):
    roots = [
        os.fspath(data / "UniversalFakeDetect"),
        os.fspath(data / "AIGCDetectBenchmark"),
        os.fspath(data / "AIGIBench" / "test"),
    ]
    csv_path = tmp_path / "r.csv"
    capsys.readouterr()
    rc = main(
        ["eval", os.fspath(trained), *roots, "--workers", "0", "--quiet"]
        + ["--csv", os.fspath(csv_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    sections = re.split(r"^## ", out, flags=re.M)[1:]
    assert [s.splitlines()[0] for s in sections] == [
        *(f"{r} (clean)" for r in roots),
        "mean per root (clean)",
    ]
    tables = [_markdown_rows(s) for s in sections[:3]]
    assert list(tables[0]) == ["dalle", "glide_100_10", "ldm_200", "mean"]
    # progan's categories are one row, as in the released evaluation
    assert list(tables[1]) == ["Glide", "progan", "whichfaceisreal", "mean"]
    assert list(tables[2]) == ["FLUX1-dev", "SD3", "SocialRF", "mean"]
    summary = sections[3]
    assert "| root " in summary and "| subsets |" in summary
    rows = _markdown_rows(summary)
    assert list(rows) == ["root", *roots]
    assert rows["root"][:2] == ["subsets", "acc"]
    for root, table in zip(roots, tables, strict=True):
        assert rows[root] == ["3", *table["mean"]]  # the root's mean row: acc ... best_acc
    means = [r for r in csv.DictReader(io.StringIO(csv_path.read_text())) if r["subset"] == "mean"]
    assert [r["root"] for r in means] == roots
    for r, root in zip(means, roots, strict=True):
        assert f"{100 * float(r['acc']):.1f}" == rows[root][1]
        assert f"{100 * float(r['ap']):.1f}" == rows[root][4]
    # one root: no summary
    assert main(["eval", os.fspath(trained), roots[0], "--workers", "0", "--quiet"]) == 0
    assert "mean per root" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# bad combinations
# ---------------------------------------------------------------------------------------------


def test_preset_with_a_model_patch_selection_cannot_tile(data, tmp_path, capsys):
    root = os.fspath(data / "AIGIBench" / "train")
    argv = ["train", "--preset", "aigibench-setting2", root, "-o", os.fspath(tmp_path / "o")]
    capsys.readouterr()
    assert main([*argv, *TINY, "--model", "tiny"]) == 2
    line = err_line(capsys)
    assert "multiple of 7" in line
    assert "--preset aigibench-setting2 selects --transform patch-selection" in line
    assert "--transform model" in line


def test_preset_on_other_subsets_warns(tmp_path, capsys):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=2, size=64)
    argv = ["train", "--preset", "aigibench-setting2", os.fspath(root)]
    argv += ["-o", os.fspath(tmp_path / "o"), *TINY, "--stage", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "dgsnet: warning: --preset aigibench-setting2 is defined on the training subsets " in err
    assert "car, cat, chair, horse, sdv1.4" in err and "not in the setting: progan, sd14" in err


def test_preset_stage2_alone_needs_a_teacher_head(data, tmp_path, capsys):
    root = os.fspath(data / "AIGIBench" / "train")
    argv = ["train", "--preset", "aigibench-setting2", root, "-o", os.fspath(tmp_path / "o")]
    capsys.readouterr()
    assert main([*argv, *TINY, "--stage", "2"]) == 2
    assert "stage 2 alone needs a trained teacher head" in err_line(capsys)
