"""`push_to_hub` / `dgsnet push`, up to the network: `HfApi.create_repo`, `create_branch`
and `upload_folder` are replaced by recorders that keep a copy of the folder they are given,
so the tests see exactly the files and the model card that would be sent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dgsnet.cli import main
from dgsnet.evaluation import load_trained
from dgsnet.hub import push_to_hub
from dgsnet.metrics import MetricsTable
from dgsnet.model_card import model_card

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """Stands in for the network calls of `huggingface_hub.HfApi`."""

    def __init__(self, keep: Path) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.keep = keep

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import huggingface_hub

        rec = self

        def create_repo(self: Any, repo_id: str, **kw: Any) -> str:
            rec.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self: Any, repo_id: str, **kw: Any) -> None:
            rec.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(self: Any, **kw: Any) -> str:
            rec.calls.append(("upload_folder", kw))
            shutil.copytree(kw["folder_path"], rec.keep)  # the folder is deleted afterwards
            return "commit-info"

        for name, fn in (
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("upload_folder", upload_folder),
        ):
            monkeypatch.setattr(huggingface_hub.HfApi, name, fn)

    def files(self) -> list[str]:
        return sorted(
            p.relative_to(self.keep).as_posix() for p in self.keep.rglob("*") if p.is_file()
        )

    def card(self) -> str:
        return (self.keep / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder(tmp_path / "sent")
    rec.install(monkeypatch)
    return rec


@pytest.fixture
def evaluated_run(oc_run: Path, bench: Path, tmp_path: Path) -> Path:
    """A copy of the open_clip run with a `dgsnet eval --json` file inside."""
    run = tmp_path / "run"
    shutil.copytree(oc_run, run)
    argv = [
        "eval",
        os.fspath(run),
        os.fspath(bench / "test"),
        "--json",
        os.fspath(run / "eval.json"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0
    return run


def test_push_sends_the_curated_run_folder_and_card(evaluated_run, recorder, capsys):
    run = evaluated_run
    assert main(["push", os.fspath(run), "org/dgs-tiny", "--license", "mit", "-q"]) == 0
    names = [c[0] for c in recorder.calls]
    assert names == ["create_repo", "upload_folder"]
    assert recorder.calls[0][1] == {
        "repo_id": "org/dgs-tiny",
        "private": None,
        "exist_ok": True,
        "repo_type": "model",
    }
    upload = recorder.calls[1][1]
    assert upload["repo_id"] == "org/dgs-tiny" and upload["revision"] is None
    assert upload["repo_type"] == "model"
    assert recorder.files() == [
        "README.md",
        "eval/eval.json",
        "final/dgs_config.json",
        "final/dgs_weights.safetensors",
        "final/dgsnet_model.json",
        "run.json",
    ]  # never last/ (optimizer state), the lock, or the log
    for name in ("dgs_config.json", "dgs_weights.safetensors", "dgsnet_model.json"):
        assert (recorder.keep / "final" / name).read_bytes() == (run / "final" / name).read_bytes()
    sent_run = json.loads((recorder.keep / "run.json").read_text())
    original = json.loads((run / "run.json").read_text())
    assert sent_run["options"]["out"] == "run" and sent_run["options"]["roots"] == ["train"]
    assert sent_run["training"] == original["training"]
    assert str(run.parent) not in (recorder.keep / "run.json").read_text()
    sent_eval = json.loads((recorder.keep / "eval" / "eval.json").read_text())
    assert sent_eval["checkpoint"] == "run" and sent_eval["roots"][0]["root"] == "test"

    card = recorder.card()
    assert card.startswith("---\nlicense: mit\nlibrary_name: dgsnet\n")
    assert "base_model:" not in card.split("---")[1]  # tiny:32 is no Hub model
    meta = json.loads((run / "final" / "dgs_config.json").read_text())
    cfg = meta["config"]
    assert "- model spec: `tiny:32`" in card
    for key in ("align_weight", "order", "align_scale", "eps"):
        assert f"| `{key}` | `{cfg[key]}` |" in card
    assert f"| `lora_rank` | `{cfg['lora_rank']}` |" in card
    assert f"| `lora_alpha` | `{cfg['lora_alpha']}` |" in card
    assert "rsLoRA, alpha / sqrt(r) = 2.449" in card  # rank 6, alpha 6
    assert f"Adapted modules: {len(meta['lora_modules'])}" in card
    assert f"- images: {original['dataset']['num_images']}" in card
    assert "- training folders: `train`" in card
    table = MetricsTable.from_dict(json.loads((run / "eval.json").read_text())["roots"][0]["table"])
    assert table.to_markdown().rstrip() in card
    assert "dgsnet predict hf-hub:org/dgs-tiny photo.jpg" in card
    assert "shared under the `mit` license" in card
    assert "W + s * B @ A" in card  # how to use it without dgsnet
    assert capsys.readouterr().err == ""


def test_cli_push_options_reach_the_api(oc_run, recorder, capsys):
    argv = [
        "push",
        os.fspath(oc_run),
        "hf-hub:org/x",
        "--private",
        "--revision",
        "dev",
        "-m",
        "first upload",
    ]
    assert main(argv) == 0
    assert [c[0] for c in recorder.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert recorder.calls[0][1]["private"] is True
    assert recorder.calls[1][1] == {
        "repo_id": "org/x",
        "branch": "dev",
        "exist_ok": True,
        "repo_type": "model",
    }
    upload = recorder.calls[2][1]
    assert upload["revision"] == "dev" and upload["commit_message"] == "first upload"
    assert "dgsnet: uploaded 5 files to org/x@dev" in capsys.readouterr().err
    card = recorder.card()
    assert card.startswith("---\nlicense: other\n")
    assert "No license was named at upload" in card
    assert "No evaluation table was uploaded" in card


def test_push_an_imported_released_run_with_an_export(released_run, recorder):
    result = push_to_hub(released_run, "org/released", exports=["onnx"], license="mit")
    files = recorder.files()
    assert result.files == files
    assert "base_model/open_clip_model.safetensors" in files
    assert "base_model/open_clip_config.json" in files
    assert "released_import.json" in files and "exports/onnx/detector.onnx" in files
    sent = json.loads((recorder.keep / "released_import.json").read_text())
    assert sent["source"] == "model_epoch_step2.pth"
    card = recorder.card()
    assert "Imported with `dgsnet import-released`" in card
    assert "stored in this repository (`base_model/`" in card
    assert "python exports/onnx/load_detector.py photo.jpg" in card
    assert "(DGS-Net's patch-selection mosaic, ImageNet mean/std)" in card
    # the uploaded folder is complete: it loads and scores like the local run
    hub_wrapper, _ = load_trained(recorder.keep)
    local_wrapper, _ = load_trained(released_run)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hub_wrapper.predict(x), local_wrapper.predict(x))


def test_push_a_wrapper_with_its_model_spec(recorder, tmp_path):
    from dgsnet import DGSConfig, DGSWrapper
    from dgsnet.models import build_model

    bundle = build_model("tiny:32")
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig(lora_dropout=0.0))
    push_to_hub(wrapper, "org/w", model="tiny:32")
    assert recorder.files() == [
        "README.md",
        "final/dgs_config.json",
        "final/dgs_weights.safetensors",
        "final/dgsnet_model.json",
    ]
    card = recorder.card()
    assert "- model spec: `tiny:32`" in card
    assert "Not recorded: the uploaded checkpoint came without its run folder." in card
    loaded, _ = load_trained(recorder.keep)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.predict(x), wrapper.predict(x))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["push", "{run}", "not-a-repo"], "is not a Hugging Face repository id"),
        (["push", "{missing}", "org/x"], "does not exist"),
        (
            ["push", "{run}", "org/x", "--eval", "{run}/run.json"],
            "is not an evaluation file written by `dgsnet eval --json`",
        ),
    ],
)
def test_bad_input_sends_nothing(oc_run, recorder, tmp_path, capsys, argv, message):
    argv = [a.format(run=oc_run, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("dgsnet: error: ") and message in err[0]
    assert recorder.calls == []


def test_card_names_a_hub_base_model_only():
    meta = {
        "config": {"lora_rank": 4, "lora_alpha": 8, "lora_scaling": "standard"},
        "model": {"kind": "hf"},
        "lora_modules": [],
    }
    card = model_card(
        repo_id="o/n", meta=meta, model_info={"spec": "hf:openai/clip-vit-large-patch14"}
    )
    assert "\nbase_model: openai/clip-vit-large-patch14\n" in card
    assert "standard, alpha / r = 2" in card
    local = model_card(repo_id="o/n", meta=meta, model_info={"spec": "hf:/home/me/clip"})
    assert "base_model:" not in local
    none = model_card(repo_id="o/n", meta=meta, model_info={})
    assert "model spec: not recorded" in none


def test_the_wrappers_own_push_to_hub(recorder: Recorder, tmp_path: Path) -> None:
    """`dgs.push_to_hub(repo)`: the saved wrapper and a card, up to the network call; what
    was sent loads back into a wrapper around a fresh model."""
    from dgsnet import DGSConfig, DGSWrapper
    from tests.helpers import batch, build, tiny_open_clip

    dgs, _ = build(DGSConfig(lora_dropout=0.0))
    result = dgs.push_to_hub(
        "hf-hub:org/tiny@dev", model="ViT-B-32@openai", license="mit", private=True
    )
    assert result.repo_id == "org/tiny" and result.revision == "dev"
    assert [c[0] for c in recorder.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert recorder.calls[0][1]["private"] is True
    assert (
        recorder.files()
        == [
            "README.md",
            "final/dgs_config.json",
            "final/dgs_weights.safetensors",
            "final/dgsnet_model.json",
        ]
        == result.files
    )
    card = recorder.card()
    assert "license: mit" in card and "# DGS-Net detector: org/tiny" in card
    assert "ViT-B-32@openai" in card and "No evaluation table was uploaded" in card
    back = DGSWrapper.from_pretrained(recorder.keep / "final", tiny_open_clip())
    x, _, _ = batch()
    torch.testing.assert_close(back.predict(x), dgs.predict(x), rtol=0, atol=0)
