"""dgsnet.interop: released DGS-Net checkpoints (synthetic files in the released layout, built
from tiny OpenAI-style open_clip models) -> wrapper and run folder, merged and unmerged."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch

from dgsnet.interop import ReleasedImport, import_released, load_released, read_released
from dgsnet.io import CheckpointError
from tests.helpers.images import make_bench, write_image
from tests.helpers.released import (
    ALPHA,
    RANK,
    SIZE,
    make_released,
    openai_style_clip,
    released_scores,
    save_released,
)


def images(n=5, seed=3):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("merged, round_trips", [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_load_released_predictions_equal_the_released_arithmetic(tmp_path, merged, round_trips):
    path, student, heads = save_released(tmp_path, merged=merged, round_trips=round_trips)
    dgs = load_released(path)
    info = dgs.released_import
    assert isinstance(info, ReleasedImport)
    assert (info.stage, info.merged, info.rank, info.alpha) == (2, merged, RANK, ALPHA)
    assert info.scaling == pytest.approx(ALPHA / RANK**0.5)
    assert (info.weight_deviation == 0) == (round_trips == 0 and not merged)
    assert info.weight_deviation < 1e-5
    assert dgs.config.lora_scaling == "rslora" and dgs.config.lora_rank == RANK
    assert not dgs.training
    x = images()
    want = released_scores(student, heads["img_fc"], x)
    assert 0.02 < float(want.min()) and float(want.max()) < 0.98  # not saturated
    got = torch.sigmoid(dgs.predict(x)).flatten()
    assert float((got - want).abs().max()) <= 1e-6
    # the LoRA matters: the teacher's scores are different
    with torch.no_grad():
        teacher_scores = torch.sigmoid(dgs.image_head(dgs.encode_teacher(x))).flatten()
    assert float((teacher_scores - want).abs().max()) > 1e-3
    for mine, theirs in (
        (dgs.teacher_head, heads["img_frozen_fc"]),
        (dgs.text_head, heads["text_fc"]),
    ):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)


def test_merged_and_unmerged_files_give_the_same_wrapper(tmp_path):
    paths = []
    for merged in (False, True):
        sd, *_ = make_released(merged=merged)
        paths.append(tmp_path / f"m{merged}.pth")
        torch.save(sd, paths[-1])
    a, b = (load_released(p) for p in paths)
    for (n1, p1), (n2, p2) in zip(
        a.named_trainable_parameters(), b.named_trainable_parameters(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("merged", [True, False])
def test_run_folder_predict_and_eval(tmp_path, capsys, merged):
    from dgsnet.cli import main
    from dgsnet.training import load_trained

    path, student, heads = save_released(tmp_path, merged=merged)
    run = tmp_path / "run"
    info = import_released(path, run)
    assert info.merged is merged and info.stage == 2
    assert json.loads((run / "released_import.json").read_text())["merged"] is merged
    model_info = json.loads((run / "final" / "dgsnet_model.json").read_text())
    assert model_info["transform"] == "patch-selection" and model_info["flip"] is False
    assert model_info["mean"] == [0.485, 0.456, 0.406]
    assert model_info["std"] == [0.229, 0.224, 0.225]
    # the folder can move: the base model is named relative to final/
    moved = tmp_path / "moved"
    os.replace(run, moved)
    pics = tmp_path / "pics"
    files = [write_image(pics / f"{i}.png", bool(i % 2), i, size=72) for i in range(4)]
    capsys.readouterr()
    assert main(["predict", os.fspath(moved), os.fspath(pics), "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in rows] == [os.fspath(f) for f in files]
    wrapper, bundle = load_trained(moved)
    from PIL import Image

    x = torch.stack([bundle.eval_transform(Image.open(f)) for f in files])
    assert x.shape == (4, 3, SIZE, SIZE)
    want = released_scores(student, heads["img_fc"], x)
    assert 0.02 < float(want.min()) and float(want.max()) < 0.98  # not saturated
    got = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    assert float((got - want.double()).abs().max()) <= 1e-6  # the CSV has 6 decimals
    with torch.no_grad():
        exact = torch.sigmoid(wrapper.predict(x)).flatten()
    assert float((exact - want).abs().max()) <= 1e-6
    # dgsnet eval accepts the folder too
    bench = make_bench(tmp_path / "bench", subsets=("progan",), n=2, size=64, captions=False)
    assert main(["eval", os.fspath(moved), os.fspath(bench), "--quiet"]) == 0
    assert "progan" in capsys.readouterr().out


def test_import_with_a_model_spec_checks_its_weights(tmp_path):
    sd, *_ = make_released()
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    first = tmp_path / "first"
    import_released(path, first)
    spec = f"local-dir:{first / 'base_model'}"
    second = tmp_path / "second"
    import_released(path, second, model=spec)
    assert not (second / "base_model").exists()
    assert json.loads((second / "final" / "dgsnet_model.json").read_text())["spec"] == spec
    other, *_ = make_released(seed=5)
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="differs from the weights of --model"):
        import_released(tmp_path / "other.pth", tmp_path / "third", model=spec)
    assert not (tmp_path / "third").exists()
    with pytest.raises(FileExistsError):
        import_released(path, second)


def test_stage1_file_gives_the_teacher_head(tmp_path):
    _, _, heads, teacher = make_released()
    sd = {f"clip_model_frozen.{k}": v for k, v in teacher.state_dict().items()}
    sd.update({f"img_frozen_fc.{k}": v for k, v in heads["img_frozen_fc"].state_dict().items()})
    sd["clip_model_frozen.input_resolution"] = torch.tensor(SIZE)  # OpenAI's scalar entries
    torch.save(sd, tmp_path / "model_epoch_step1.pth")
    dgs = load_released(tmp_path / "model_epoch_step1.pth")
    assert dgs.released_import.stage == 1 and dgs.released_import.merged is None
    assert torch.equal(dgs.teacher_head.weight, heads["img_frozen_fc"].weight)
    x = images()
    with torch.no_grad():
        assert float((dgs.encode_student(x) - teacher.encode_image(x)).abs().max()) <= 1e-5
    assert all(
        float(p.detach().abs().max()) == 0
        for n, p in dgs.named_trainable_parameters()
        if "lora_B" in n
    )


# ------------------------------------------------------------------------------------------
# bad files: one clear CheckpointError naming the problem
# ------------------------------------------------------------------------------------------
class NotATensor:
    pass


def _bad(tmp_path, kind):
    sd, *_ = make_released(merged=kind == "wrong_alpha")
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        torch.save(sd, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated"
    if kind == "object":
        torch.save({**sd, "img_fc.weight": NotATensor()}, path)
        return path, "objects other than tensors"
    if kind == "string":
        torch.save({**sd, "img_fc.bias": "not a tensor"}, path)
        return path, "'img_fc.bias' is a str, expected a tensor"
    if kind == "list":
        torch.save([1, 2, 3], path)
        return path, "holds a list, expected a state dict"
    if kind == "unknown":
        sd["clip_model.visual.extra.weight"] = torch.zeros(3)
    elif kind == "unknown_prefix":
        sd["optimizer.step"] = torch.zeros(1)
    elif kind == "missing":
        del sd["clip_model.visual.transformer.resblocks.1.attn.v_proj.w_lora_B"]
    elif kind == "missing_teacher":
        del sd["clip_model_frozen.clip_model_frozen.ln_final.weight"]
    elif kind == "shape":
        sd["img_fc.weight"] = torch.zeros(1, 16)
    elif kind == "student_base":
        sd["clip_model.visual.ln_post.weight"] = sd["clip_model.visual.ln_post.weight"] + 1
    elif kind == "mixed_size":
        small, *_ = make_released(width=64)
        sd.update({k: v for k, v in small.items() if k.startswith("clip_model.")})
    torch.save(sd, path)
    expected = {
        "unknown": "unknown key 'clip_model.visual.extra.weight'",
        "unknown_prefix": "unknown key 'optimizer.step'",
        "missing": "missing key 'clip_model.visual.transformer.resblocks.1.attn.v_proj.w_lora_B'",
        "missing_teacher": "missing key 'clip_model_frozen.clip_model_frozen.ln_final.weight'",
        "shape": "img_fc.weight / img_fc.bias have shapes",
        "student_base": "'clip_model.visual.ln_post.weight' differs from the pristine copy",
        "wrong_alpha": "pass the alpha it was trained with",
        "mixed_size": "student and teacher are different model sizes",
    }[kind]
    return path, expected


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "object",
        "string",
        "list",
        "unknown",
        "unknown_prefix",
        "missing",
        "missing_teacher",
        "shape",
        "student_base",
        "mixed_size",
        "wrong_alpha",
    ],
)
def test_bad_files_fail_with_one_clear_error(tmp_path, kind):
    path, expected = _bad(tmp_path, kind)
    alpha = 3.0 if kind == "wrong_alpha" else ALPHA
    with pytest.raises(CheckpointError) as err:
        read_released(path, alpha=alpha)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_file_of_a_different_model_size(tmp_path):
    sd, *_ = make_released(width=128)
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"different model size") as err:
        load_released(path, model=openai_style_clip(width=64))
    assert "clip_model_frozen.clip_model_frozen." in str(err.value)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        read_released(tmp_path / "nope.pth")


def test_stage2_training_starts_from_an_imported_stage1_file(tmp_path):
    """The documented route: import the stage-1 file, then ``dgsnet train --stage 2
    --init-from`` it with the stored base model."""
    from dgsnet.cli import main
    from dgsnet.training import load_trained

    _, _, heads, teacher = make_released()
    sd = {f"clip_model_frozen.{k}": v for k, v in teacher.state_dict().items()}
    sd.update({f"img_frozen_fc.{k}": v for k, v in heads["img_frozen_fc"].state_dict().items()})
    torch.save(sd, tmp_path / "model_epoch_step1.pth")
    stage1 = tmp_path / "stage1"
    import_released(tmp_path / "model_epoch_step1.pth", stage1)
    data = make_bench(tmp_path / "data" / "train", subsets=("car", "sdv1.4"), n=2, size=64)
    out = tmp_path / "stage2"
    argv = [
        "train",
        "--preset",
        "aigibench-setting2",
        "--model",
        f"local-dir:{stage1 / 'base_model'}",
        "--stage",
        "2",
        "--init-from",
        os.fspath(stage1),
        os.fspath(data),
        "-o",
        os.fspath(out),
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0  # (warns on stderr: not the five Setting-II subsets)
    wrapper, _ = load_trained(out)
    assert torch.equal(wrapper.teacher_head.weight, heads["img_frozen_fc"].weight)
    assert wrapper.config.lora_scaling == "rslora"
    assert any(
        float(p.detach().abs().max()) > 0
        for n, p in wrapper.named_trainable_parameters()
        if "lora_B" in n
    )  # stage 2 trained the LoRA
