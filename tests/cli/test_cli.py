"""The ``dgsnet`` command line, end to end on image trees written into tmp_path (tiny model)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from dgsnet.cli import main
from tests.helpers import make_bench, write_image
from tests.helpers.cli import REPO, subprocess_env, tiny_train_flags, train_argv

FAST = tiny_train_flags()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    make_bench(base / "train", subsets=("progan", "sd14"), n=4)
    make_bench(base / "test", subsets=("biggan", "dalle", "glide"), n=3, seed=3, captions=False)
    return base


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(train_argv(data / "train", out, *FAST)) == 0
    return out


def err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[0]


# ---------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, expected",
    [
        (["--help"], ["train", "eval", "predict", "caption", "tsne"]),
        (
            ["train", "--help"],
            [
                "--stage",
                "--epochs",
                "--batch-size",
                "--lr",
                "--config",
                "--out",
                "--resume",
                "--no-resume",
                "--seed",
                "--device",
                "--transform",
                "--order",
                "--align-weight",
                "--align-scale",
                "--no-suppression",
                "--no-alignment",
                "--lora-rank",
                "--lora-targets",
                "--on-nonfinite",
                "--captions",
                "examples:",
                "torchrun",
            ],
        ),
        (
            ["eval", "--help"],
            [
                "--csv",
                "--json",
                "--plot",
                "--jpeg-quality",
                "--blur-sigma",
                "--resize-scale",
                "examples:",
            ],
        ),
        (["predict", "--help"], ["path,score,label_pred", "--threshold", "--out", "examples:"]),
        (
            ["caption", "--help"],
            ["--template", "--blip-model", "--relative", "resumes", "examples:"],
        ),
        (["tsne", "--help"], ["--out", "--max-per-class", "viz", "examples:"]),
        (["features", "--help"], ["t-SNE", "examples:"]),
    ],
)
def test_help(capsys, command, expected):
    assert main(command) == 0
    text = capsys.readouterr().out
    for word in expected:
        assert word in text, word


# ---------------------------------------------------------------------------------------------
# train -> eval
# ---------------------------------------------------------------------------------------------


def test_train_then_eval_prints_per_subset_table(trained, data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for name in ("last", "final", "train_log.jsonl", "run.json", "summary.json"):
        assert (trained / name).exists(), name
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["skipped_steps"] == 0
    run = json.loads((trained / "run.json").read_text())
    assert run["model"]["spec"] == "tiny:32" and run["options"]["batch_size"] == 4
    capsys.readouterr()
    csv_path, json_path, png = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "acc.png"
    rc = main(
        [
            "eval",
            os.fspath(trained),
            os.fspath(data / "test"),
            "--workers",
            "0",
            "--quiet",
            "--csv",
            os.fspath(csv_path),
            "--json",
            os.fspath(json_path),
            "--plot",
            os.fspath(png),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"## {data / 'test'} (clean)" in out
    assert "| subset |" in out and "| mean " in out
    for subset in ("biggan", "dalle", "glide"):
        assert f"| {subset}" in out
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["subset"] for r in rows] == ["biggan", "dalle", "glide", "mean"]
    assert rows[0]["n_real"] == "3" and rows[0]["degradation"] == "clean"
    report = json.loads(json_path.read_text())
    assert report["roots"][0]["table"]["format"] == "dgsnet.metrics_table"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_degradations_and_two_roots(trained, data, capsys):
    capsys.readouterr()
    rc = main(
        [
            "eval",
            os.fspath(trained / "final"),
            os.fspath(data / "test"),
            os.fspath(data / "test" / "dalle"),
            "--workers",
            "0",
            "--quiet",
            "--jpeg-quality",
            "50",
            "--blur-sigma",
            "1",
            "--resize-scale",
            "0.5",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    # two tables, then the mean row of each root in one summary table
    assert out.count("(resize0.5_blur1_jpeg50)") == 3 and out.count("| mean ") == 2
    assert "## mean per root (resize0.5_blur1_jpeg50)" in out


def test_entry_point_subprocess(trained, data):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dgsnet.cli",
            "eval",
            os.fspath(trained),
            os.fspath(data / "test"),
            "--workers",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| biggan" in proc.stdout and "| mean " in proc.stdout


def test_rerun_resumes_and_no_resume_starts_over(trained, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_argv(data / "train", out, *FAST, "--save-every", "1")
    assert main(args) == 0
    first = (out / "final" / "dgs_weights.safetensors").read_bytes()
    assert main(args) == 0  # complete run: nothing left to do, same weights
    assert (out / "final" / "dgs_weights.safetensors").read_bytes() == first
    log = (out / "train_log.jsonl").read_text()
    assert '"event": "resume"' in log
    assert main([*args, "--no-resume"]) == 0
    assert '"event": "resume"' not in (out / "train_log.jsonl").read_text()
    assert (out / "final" / "dgs_weights.safetensors").read_bytes() == first  # same seed, same run
    capsys.readouterr()
    assert main(train_argv(data / "train", tmp_path / "none", *FAST, "--resume")) == 2
    assert "nothing to resume" in err_line(capsys)


def test_config_file_with_overrides(data, tmp_path, capsys):
    cfg = tmp_path / "recipe.json"
    cfg.write_text(
        json.dumps(
            {
                "roots": [os.fspath(data / "train")],
                "model": "tiny",
                "workers": 0,
                "batch_size": 8,
                "epochs": 1,
                "stage1_epochs": 1,
                "lr": 1e-3,
                "quiet": True,
                "dgs": {"align_weight": 0.5, "lora_rank": 2},
            }
        )
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                os.fspath(cfg),
                "--out",
                os.fspath(out),
                "--batch-size",
                "16",
                "--lora-rank",
                "3",
                "--order",
                "project_then_align",
            ]
        )
        == 0
    )
    options = json.loads((out / "run.json").read_text())["options"]
    assert options["batch_size"] == 16 and options["epochs"] == 1
    config = json.loads((out / "final" / "dgs_config.json").read_text())["config"]
    assert config["align_weight"] == 0.5 and config["lora_rank"] == 3
    assert config["order"] == "project_then_align"
    assert config["lora_targets"] == ["q_proj", "k_proj", "v_proj"]  # the reference preset
    cfg.write_text(json.dumps({"batch_sise": 8}))
    capsys.readouterr()
    assert main(["train", "--config", os.fspath(cfg), "--out", os.fspath(out)]) == 2
    assert "unknown option 'batch_sise'" in err_line(capsys)


def test_ablation_flags_reach_the_config(data, tmp_path):
    out = tmp_path / "run"
    ablation = ["--no-suppression", "--align-scale", "invariant", "--lora-alpha", "3"]
    assert main(train_argv(data / "train", out, *FAST, *ablation, "--lora-layers", "-1")) == 0
    config = json.loads((out / "final" / "dgs_config.json").read_text())["config"]
    assert config["suppression"] is False and config["alignment"] is True
    assert config["align_scale"] == "invariant" and config["lora_alpha"] == 3.0
    assert config["lora_layers"] == [-1]


# ---------------------------------------------------------------------------------------------
# non-finite loss through the command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def nan_at_step_2(monkeypatch):
    from dgsnet.wrapper import DGSWrapper

    original = DGSWrapper.forward
    calls = {"n": 0}

    def forward(self, images, text, labels, index=None):
        out = original(self, images, text, labels, index=index)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DGSWrapper, "forward", forward)


def test_nonfinite_raise_exits_1_naming_the_step(data, tmp_path, capsys, nan_at_step_2):
    capsys.readouterr()
    rc = main(train_argv(data / "train", tmp_path / "r", *FAST))
    assert rc == 1
    line = err_line(capsys)
    assert line.startswith("dgsnet: error: non-finite loss (nan) at stage 2, epoch 1, step 2")
    assert "--on-nonfinite skip" in line


def test_nonfinite_skip_counts(data, tmp_path, nan_at_step_2):
    out = tmp_path / "r"
    assert main(train_argv(data / "train", out, *FAST, "--on-nonfinite", "skip")) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1


# ---------------------------------------------------------------------------------------------
# predict, caption, plots
# ---------------------------------------------------------------------------------------------


def test_predict_csv(trained, data, tmp_path, capsys):
    one = data / "test" / "dalle" / "1_fake" / "000.png"
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                os.fspath(trained),
                os.fspath(data / "test" / "biggan"),
                os.fspath(one),
                "--quiet",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 7 and rows[-1]["path"] == os.fspath(one)
    for r in rows:
        assert 0.0 <= float(r["score"]) <= 1.0
        assert r["label_pred"] == str(int(float(r["score"]) > 0.5))
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                os.fspath(trained),
                os.fspath(one),
                "--out",
                os.fspath(out),
                "--threshold",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert out.read_text().splitlines() == ["path,score,label_pred", f"{one},{rows[-1]['score']},1"]


def test_caption_template_then_train(tmp_path, capsys):
    root = make_bench(tmp_path / "train", subsets=("progan",), n=2, captions=False)
    write_image(root / "progan" / "0_real" / "extra.jpg", False, 7, fmt="JPEG")
    capsys.readouterr()
    assert main(["caption", os.fspath(root), "--template", "--quiet"]) == 0
    # template captions carry no per-image content: the command says so
    assert "dgsnet: warning: TemplateCaptioner writes template captions" in capsys.readouterr().err
    cap_file = tmp_path / "train_text" / "train.json"
    captions = json.loads(cap_file.read_text())
    assert len(captions) == 5 and set(captions.values()) == {"a photo of an object"}
    assert (
        main(
            [
                "caption",
                os.fspath(root),
                "--template",
                "a picture of {article} {category}",
                "--quiet",
                "--out",
                os.fspath(cap_file),
            ]
        )
        == 0
    )  # resumable: nothing new to do
    assert json.loads(cap_file.read_text()) == captions
    assert main(train_argv(root, tmp_path / "run", *FAST)) == 0


def test_caption_fallback_without_caption_file(tmp_path, capsys):
    root = make_bench(tmp_path / "train", subsets=("progan",), n=2, captions=False)
    capsys.readouterr()
    args = train_argv(root, tmp_path / "run", *FAST)
    assert main([*args, "--caption-fallback"]) == 0
    assert "dgsnet: warning: 4 of 4 images have no caption" in capsys.readouterr().err


def test_tsne_png(trained, data, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png, npz = tmp_path / "tsne.png", tmp_path / "f.npz"
    assert (
        main(
            [
                "tsne",
                os.fspath(trained),
                os.fspath(data / "test"),
                "--out",
                os.fspath(png),
                "--save-features",
                os.fspath(npz),
                "--quiet",
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    import numpy as np

    with np.load(npz) as f:
        assert f["teacher"].shape == f["student"].shape == (18, 32)
        assert f["labels"].tolist().count(1) == 9


def test_plot_without_matplotlib_names_the_extra(trained, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    capsys.readouterr()
    rc = main(
        [
            "eval",
            os.fspath(trained),
            os.fspath(data / "test"),
            "--plot",
            os.fspath(tmp_path / "a.png"),
            "--workers",
            "0",
            "--quiet",
        ]
    )
    assert rc == 2
    assert "dgsnet[viz]" in err_line(capsys)


# ---------------------------------------------------------------------------------------------
# bad input: one clear line, exit status 2
# ---------------------------------------------------------------------------------------------


def _corrupt_tree(tmp_path: Path) -> Path:
    root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    bad = root / "progan" / "1_fake" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return root


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-root", "does not exist"),
        ("empty-folder", "contains no images"),
        ("no-class-folders", "neither dataset layout"),
        ("missing-captions", "no caption file found"),
        ("partial-captions", "have no caption"),
        ("corrupt-image", "cannot read image"),
        ("corrupt-image-in-worker", "cannot read image"),
        ("bad-model", "which weights"),
        ("bad-option-value", "lora_dropout"),
        ("no-out", "--out"),
    ],
)
def test_train_bad_input(tmp_path, capsys, case, message):
    extra: list[str] = []
    if case == "missing-root":
        root = tmp_path / "nope"
    elif case == "empty-folder":
        root = tmp_path / "train"
        (root / "progan" / "0_real").mkdir(parents=True)
        (root / "progan" / "1_fake").mkdir(parents=True)
    elif case == "no-class-folders":
        root = tmp_path / "train"
        write_image(root / "a" / "b.png", False, 0)
    elif case == "missing-captions":
        root = make_bench(tmp_path / "train", subsets=("progan",), n=2, captions=False)
    elif case == "partial-captions":
        root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
        write_image(root / "progan" / "0_real" / "new.png", False, 5)
    elif case.startswith("corrupt-image"):
        root = _corrupt_tree(tmp_path)
        if case.endswith("worker"):
            extra = ["--workers", "1"]
    else:
        root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
        extra = {
            "bad-model": ["--model", "ViT-B-32"],
            "bad-option-value": ["--lora-dropout", "1.5"],
        }.get(case, [])
    args = train_argv(root, tmp_path / "out", *FAST, *extra)
    if case == "no-out":
        args = ["train", os.fspath(root), "--model", "tiny", "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    line = err_line(capsys)
    assert line.startswith("dgsnet: error: ")
    assert message in line


def test_eval_bad_input(trained, data, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", os.fspath(tmp_path / "nothing"), os.fspath(data / "test"), "--quiet"]) == 2
    assert "does not exist" in err_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["eval", os.fspath(tmp_path / "empty"), os.fspath(data / "test"), "--quiet"]) == 2
    assert "neither a dgsnet checkpoint" in err_line(capsys)
    assert main(["eval", os.fspath(trained), os.fspath(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in err_line(capsys)
    assert (
        main(
            ["eval", os.fspath(trained), os.fspath(data / "test"), "--jpeg-quality", "0", "--quiet"]
        )
        == 2
    )
    assert "--jpeg-quality must be an integer in 1..100" in err_line(capsys)
    # a tampered checkpoint
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "final", ckpt)
    w = ckpt / "dgs_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    assert (
        main(["eval", os.fspath(ckpt), os.fspath(data / "test"), "--workers", "0", "--quiet"]) == 2
    )
    assert "checksum" in err_line(capsys)


def test_predict_bad_input(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    for target, message in (
        (tmp_path / "empty", "contains no images"),
        (tmp_path / "notes.txt", "not an image"),
        (tmp_path / "gone.png", "does not exist"),
        (bad, "cannot read image"),
    ):
        assert main(["predict", os.fspath(trained), os.fspath(target), "--quiet"]) == 2, target
        assert message in err_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    from dgsnet.data import DatasetError

    with pytest.raises(DatasetError):
        main(train_argv(tmp_path, tmp_path / "o", *FAST, "--debug"))


def test_argparse_errors_exit_2(capsys):
    assert main(["train", "--stage", "3"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


# ---------------------------------------------------------------------------------------------
# DGS options follow the DGSConfig fields
# ---------------------------------------------------------------------------------------------


def test_dgs_options_follow_the_config_fields(monkeypatch, capsys):
    """A field added to DGSConfig gets its option with no other change: a bool switch away
    from its default, a choice for a Literal, a typed value for a number, and the value
    reaches the config."""
    import dataclasses

    from dgsnet.cli import build_parser, options
    from dgsnet.config import DGSConfig

    @dataclasses.dataclass(frozen=True)  # DGSConfig is frozen
    class Extended(DGSConfig):
        toy_mode: Literal["one", "two"] = "one"
        toy_switch: bool = False
        keep_probe: bool = True
        distill_weight: float = 0.5

    monkeypatch.setattr(options, "DGSConfig", Extended)
    parser = build_parser()
    train_parser = parser.parse_args(["train"])._subparsers["train"]
    flags = {opt for a in train_parser._actions for opt in a.option_strings}
    assert {"--toy-mode", "--toy-switch", "--no-keep-probe", "--distill-weight"} <= flags
    assert not {"--keep-probe", "--no-toy-switch", "--eps", "--extra"} & flags
    args = options.parse_args(
        parser,
        [
            "train",
            "x",
            "--toy-mode",
            "two",
            "--toy-switch",
            "--no-keep-probe",
            "--distill-weight",
            "0.25",
            "--lora-rank",
            "3",
        ],
    )
    config = options.dgs_config(args)
    assert isinstance(config, Extended)
    assert (config.toy_mode, config.toy_switch) == ("two", True)
    assert config.keep_probe is False
    assert config.distill_weight == 0.25 and config.lora_rank == 3
    assert config.suppression is True  # flags not given keep the preset's value
    assert main(["train", "x", "--lora-scaling", "other"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_released_fidelity_options_are_train_flags():
    """The LoRA scaling and feature distillation of DGSConfig are `dgsnet train` flags, and
    the reference preset starts from the released alpha/sqrt(r) scaling."""
    from dgsnet.cli import build_parser, options

    parser = build_parser()
    args = options.parse_args(parser, ["train", "x", "--feature-distill", "0.5"])
    config = options.dgs_config(args)
    assert config.feature_distill == 0.5 and config.lora_scaling == "rslora"
    args = options.parse_args(parser, ["train", "x", "--lora-scaling", "standard"])
    assert options.dgs_config(args).lora_scaling == "standard"
