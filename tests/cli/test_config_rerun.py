"""Configs that rerun: a run writes OUT/config.yaml, `dgsnet train --config RUN/config.yaml`
reproduces its final weights bit for bit; YAML and JSON config files; unknown keys refused
naming the nearest valid one."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from dgsnet.cli import main, train_settings
from tests.helpers.images import make_bench

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--model", "tiny", "--workers", "0", "--batch-size", "4", "--epochs", "2",
         "--stage1-epochs", "1", "--lr", "1e-3", "--stage1-lr", "1e-2", "--lora-rank", "4",
         "--lora-dropout", "0.1", "--seed", "3", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    data = make_bench(root / "data" / "train", n=2)
    out = root / "run"
    assert main(["train", str(data), "-o", str(out), *FLAGS]) == 0
    return root, out


def weights(folder):
    return load_file(folder / "final" / "dgs_weights.safetensors")


def test_the_run_saves_a_config_that_reruns_it_bit_for_bit(first_run, monkeypatch):
    root, out = first_run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["seed"] == 3 and config["model"] == "tiny"
    assert config["dgs"]["lora_rank"] == 4 and config["dgs"]["lora_dropout"] == 0.1
    assert "resume" not in config and config["roots"] == [str(root / "data" / "train")]
    # from another directory: the recorded paths are absolute
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(out / "config.yaml"), "-o", "again", "-q"]) == 0
    a, b = weights(out), weights(elsewhere / "again")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    again = yaml.safe_load((elsewhere / "again" / "config.yaml").read_text())
    assert {**again, "out": None} == {**config, "out": None}


def test_the_config_and_the_flags_give_the_same_settings(first_run):
    root, out = first_run
    from_flags = train_settings([str(root / "data" / "train"), "-o", str(out), *FLAGS])
    from_file = train_settings(["--config", str(out / "config.yaml")])
    assert from_file["dgs_config"] == from_flags["dgs_config"]
    for key in ("epochs", "batch_size", "lr", "seed", "model", "stage1_lr"):
        assert from_file[key] == from_flags[key], key


def test_flags_override_the_file(first_run):
    _, out = first_run
    settings = train_settings(["--config", str(out / "config.yaml"), "--epochs", "5"])
    assert settings["epochs"] == 5 and settings["dgs_config"]["lora_rank"] == 4


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_yaml_and_json_config_files(tmp_path, suffix):
    data = {"roots": ["data/train"], "out": "runs/x", "model": "tiny", "batch_size": 16,
            "dgs": {"align_weight": 0.5}}  # fmt: skip
    path = tmp_path / f"c{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    settings = train_settings(["--config", str(path)])
    assert settings["batch_size"] == 16 and settings["dgs_config"]["align_weight"] == 0.5


@pytest.mark.parametrize(
    "body, message",
    [
        ("batchsize: 8\n", "unknown option 'batchsize' (did you mean 'batch_size'?)"),
        (
            "dgs:\n  lora_rnak: 4\n",
            "unknown DGSConfig field 'lora_rnak' (did you mean 'lora_rank'?)",
        ),
        ("dataset: x\n", "unknown option 'dataset' (known: "),
        ("epochs: [1\n", "is not valid YAML (line 2, column 1"),
        ("- 1\n- 2\n", "must hold a YAML mapping of options"),
    ],
)
def test_bad_config_files_are_named(tmp_path, capsys, body, message):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    assert main(["train", "--config", str(path), str(tmp_path), "-o", "x"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_a_run_record_is_not_taken_for_a_config(first_run, capsys):
    _, out = first_run
    assert main(["train", "--config", str(out / "run.json")]) == 2
    assert "pass the config.yaml beside it" in capsys.readouterr().err
