"""dgsnet.training: model specs, sampler, resumable two-stage training, checkpoints, NaN
handling, evaluation. Tiny random models and image trees written into tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.io import CheckpointError
from dgsnet.metrics import MetricsTable
from dgsnet.training import (
    FINAL_DIR,
    LAST_DIR,
    LOG_NAME,
    OPTIMIZER_NAME,
    STATE_NAME,
    ModelLoadError,
    ModelSpec,
    NonFiniteError,
    ResumableSampler,
    TrainingConfigError,
    TrainItems,
    build_model,
    evaluate,
    find_resume_checkpoint,
    load_trained,
    open_datasets,
)
from tests.helpers import make_bench, write_image, write_tiny_hf_base
from tests.helpers.training import Boom, assert_same_weights, train_tiny, weights

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("data") / "train", n=4)


@pytest.fixture(scope="module")
def test_bench(tmp_path_factory) -> Path:
    return make_bench(
        tmp_path_factory.mktemp("data") / "test",
        subsets=("biggan", "dalle"),
        n=3,
        seed=5,
        captions=False,
    )


run = train_tiny  # the tiny model; RUN_OPTIONS but for what a test passes


def raise_after(k: int, event: str = "step_end"):
    def cb(ev, state):
        if ev == event and (event != "step_end" or state.global_step == k):
            raise Boom(f"simulated crash after step {state.global_step}")

    return cb


@pytest.fixture(scope="module")
def reference_run(bench, tmp_path_factory):
    """An uninterrupted run (16 images, batch 3: 6 steps per epoch, 2 epochs)."""
    out = tmp_path_factory.mktemp("ref")
    result = run(bench, out)
    return result, weights(result.wrapper)


# ---------------------------------------------------------------------------------------------
# model specs
# ---------------------------------------------------------------------------------------------


def test_model_spec_parse():
    assert ModelSpec.parse("tiny") == ModelSpec("tiny", "tiny", None, 32)
    assert ModelSpec.parse("tiny:64").image_size == 64
    s = ModelSpec.parse("ViT-L-14@openai")
    assert (s.kind, s.name, s.pretrained, str(s)) == (
        "open_clip",
        "ViT-L-14",
        "openai",
        "ViT-L-14@openai",
    )
    assert ModelSpec.parse("ViT-L-14", pretrained="openai") == s
    assert ModelSpec.parse("open_clip:ViT-B-32@laion2b_s34b_b79k").name == "ViT-B-32"
    assert ModelSpec.parse("hf:openai/clip-vit-large-patch14").kind == "hf"
    with pytest.raises(ModelLoadError, match="which weights"):
        ModelSpec.parse("ViT-L-14")
    with pytest.raises(ModelLoadError, match="multiple of 8"):
        ModelSpec.parse("tiny:30")
    with pytest.raises(ModelLoadError, match="tiny:<image size>"):
        ModelSpec.parse("tiny:big")


def test_build_model_tiny_reproducible_and_transforms():
    a = build_model("tiny")
    b = build_model("tiny:32")
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    model, tokenizer, train_tf, eval_tf = a  # unpacks like a tuple
    img = Image.new("RGB", (48, 40), (120, 30, 200))
    assert eval_tf(img).shape == (3, 32, 32)
    assert train_tf(img).shape == (3, 32, 32)
    assert a.deterministic_train is False
    assert build_model("tiny", flip=False).deterministic_train is True
    ps = build_model("tiny:56", transform="patch-selection")
    assert ps.eval_transform(Image.new("RGB", (64, 64))).shape == (3, 56, 56)
    assert ps.deterministic_train is False
    with pytest.raises(ModelLoadError, match="multiple of 7"):
        build_model("tiny", transform="patch-selection")


def test_build_model_open_clip_errors_are_clear():
    with pytest.raises(ModelLoadError, match="NoSuchModel.*available locally"):
        build_model("NoSuchModel@openai")


def test_build_model_hf_local_folder(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    write_tiny_hf_base(tmp_path)
    bundle = build_model(f"hf:{tmp_path}")
    assert bundle.spec.kind == "hf" and bundle.image_size == 32
    x = bundle.eval_transform(Image.new("RGB", (50, 40)))
    assert x.shape == (3, 32, 32)
    w = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig.reference(lora_dropout=0.0))
    out = w(x[None].repeat(2, 1, 1, 1), ["a red car", "a cat"], torch.tensor([0, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------
# sampler and items
# ---------------------------------------------------------------------------------------------


def test_resumable_sampler_reproducible_resumable_sharded():
    s = ResumableSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(full) == list(range(10))
    again = ResumableSampler(10, seed=3)
    again.set_epoch(1)
    assert list(again) == full
    s.set_epoch(2)
    assert list(s) != full
    s.set_epoch(1)
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6
    shards = []
    for r in range(3):
        t = ResumableSampler(10, seed=3, rank=r, world_size=3)
        t.set_epoch(1)
        assert len(t) == 4
        shards.append(list(t))
    assert set().union(*map(set, shards)) == set(range(10))
    assert sum(map(len, shards)) == 12  # padded like DistributedSampler


def test_train_items_seeded_augmentation_and_global_index(bench):
    bundle = build_model("tiny")
    a = open_datasets([bench], bundle.train_transform, captions="auto")[0]
    items = TrainItems([a, a], seed=1)
    assert len(items) == 2 * len(a)
    items.set_epoch(("stage2", 0))
    first = items[5].image
    state = torch.get_rng_state()
    assert torch.equal(items[5].image, first)  # a pure function of (seed, epoch, index)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert items[len(a) + 2].index == len(a) + 2
    flips = set()
    for e in range(8):
        items.set_epoch(("stage2", e))
        flips.add(torch.equal(items[5].image, first))
    assert flips == {True, False}  # the flip varies with the epoch


# ---------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------


def test_train_output_layout_log_and_reload(reference_run, test_bench):
    result, _ = reference_run
    out = result.out_dir
    assert (
        result.global_step == 12 and result.skipped_steps == 0 and len(result.stage1_history) == 2
    )
    for name in (LAST_DIR, FINAL_DIR, LOG_NAME, "run.json", "summary.json"):
        assert (out / name).exists(), name
    assert sorted(os.listdir(out / LAST_DIR)) == sorted(
        [
            "dgs_config.json",
            "dgs_weights.safetensors",
            "dgsnet_model.json",
            OPTIMIZER_NAME,
            STATE_NAME,
        ]
    )
    state = json.loads((out / LAST_DIR / STATE_NAME).read_text())
    assert state["phase"] == "done" and state["epoch"] == 2 and state["global_step"] == 12
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"image", "text", "teacher", "align"} <= set(steps[0]["losses"])
    assert {"removed_fraction", "cos_harm", "cos_help"} <= set(steps[0]["stats"])
    assert [r["epoch"] for r in records if r["event"] == "stage1_epoch"] == [1, 2]
    assert records[-1]["event"] == "summary" and records[-1]["skipped_steps"] == 0
    wrapper, bundle = load_trained(out)
    assert_same_weights(weights(wrapper), weights(result.wrapper))
    tables = evaluate(wrapper, [test_bench], bundle.eval_transform, batch_size=5)
    table = tables[os.fspath(test_bench)]
    assert isinstance(table, MetricsTable) and table.subsets == ("biggan", "dalle")
    assert table["biggan"].n_real == 3 and table["biggan"].n_fake == 3


@pytest.mark.parametrize("crash_at", [5, 6])
def test_resume_after_interruption_gives_identical_weights(
    bench, tmp_path, reference_run, crash_at
):
    """Crash after step 5 (checkpoint at step 4: step 5 is redone) or 6 (the epoch's last
    batch, before its epoch-end checkpoint); resuming reproduces the uninterrupted run."""
    _, expected = reference_run
    with pytest.raises(Boom):
        run(bench, tmp_path, callbacks=[raise_after(crash_at)])
    state = json.loads((tmp_path / LAST_DIR / STATE_NAME).read_text())
    assert state["global_step"] == 4 and state["batch"] == 4 and state["epoch"] == 0
    resumed = run(bench, tmp_path)
    assert resumed.resumed_from == 4
    assert_same_weights(weights(resumed.wrapper), expected)
    records = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == list(
        range(1, 13)
    )  # no duplicates
    assert any(r["event"] == "resume" for r in records)


def test_resume_with_teacher_cache_gives_identical_weights(bench, tmp_path):
    """Deterministic transform (no flip): indices reach the wrapper, stage 1 fills its teacher
    cache, and the checkpoint carries that cache so that the resumed run matches."""
    expected = weights(run(bench, tmp_path / "a", flip=False, epochs=1).wrapper)
    with pytest.raises(Boom):
        run(bench, tmp_path / "b", flip=False, epochs=1, callbacks=[raise_after(3)])
    assert (tmp_path / "b" / LAST_DIR / "teacher_cache.safetensors").is_file()
    resumed = run(bench, tmp_path / "b", flip=False, epochs=1)
    assert resumed.resumed_from == 2
    assert_same_weights(weights(resumed.wrapper), expected)


def test_sigint_checkpoints_then_stops_and_resumes_exactly(bench, tmp_path, reference_run):
    import signal

    from dgsnet.training import TrainingInterrupted

    _, expected = reference_run

    def ctrl_c(event, state):
        if event == "step_end" and state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped at stage-2 step 3"):
        run(bench, tmp_path, callbacks=[ctrl_c], handle_signals=True)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert json.loads((tmp_path / LAST_DIR / STATE_NAME).read_text())["global_step"] == 3
    resumed = run(bench, tmp_path)
    assert resumed.resumed_from == 3
    assert_same_weights(weights(resumed.wrapper), expected)


def test_resume_after_stage1_interruption(bench, tmp_path, reference_run):
    _, expected = reference_run
    with pytest.raises(Boom):
        run(bench, tmp_path, callbacks=[raise_after(0, "stage1_end")])
    assert json.loads((tmp_path / LAST_DIR / STATE_NAME).read_text())["phase"] == "stage2"
    resumed = run(bench, tmp_path)
    assert_same_weights(weights(resumed.wrapper), expected)


def test_crash_while_writing_checkpoint_keeps_previous(bench, tmp_path, reference_run, monkeypatch):
    import dgsnet.training.run_state as training

    _, expected = reference_run
    real = training.save_tensors
    calls = {"n": 0}

    def failing(path, tensors, metadata=None):
        if Path(path).name == OPTIMIZER_NAME:
            calls["n"] += 1
            if calls["n"] == 2:  # the second stage-2 checkpoint (step 4) dies half way
                Path(path).write_bytes(b"partial")
                raise OSError("disk full (simulated)")
        return real(path, tensors, metadata)

    monkeypatch.setattr(training, "save_tensors", failing)
    with pytest.raises(OSError, match="simulated"):
        run(bench, tmp_path)
    monkeypatch.setattr(training, "save_tensors", real)
    state = json.loads((tmp_path / LAST_DIR / STATE_NAME).read_text())
    assert state["global_step"] == 2  # the previous complete checkpoint
    resumed = run(bench, tmp_path)
    assert resumed.resumed_from == 2
    assert_same_weights(weights(resumed.wrapper), expected)


def test_crash_between_renames_resumes_from_prev(bench, tmp_path, reference_run, monkeypatch):
    import dgsnet.training.run_folder as training

    _, expected = reference_run
    real = os.replace
    seen = {"n": 0}

    def flaky(src, dst, *a, **k):
        if Path(dst).name == LAST_DIR and Path(src).name == f".{LAST_DIR}.tmp":
            seen["n"] += 1
            if seen["n"] == 3:  # after "last" was moved to "last.prev", before the new one lands
                raise OSError("power cut (simulated)")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(training.os, "replace", flaky)
    with pytest.raises(OSError, match="power cut"):
        run(bench, tmp_path)
    monkeypatch.setattr(training.os, "replace", real)
    assert not (tmp_path / LAST_DIR).exists()
    assert find_resume_checkpoint(tmp_path) == tmp_path / f"{LAST_DIR}.prev"
    resumed = run(bench, tmp_path)
    assert resumed.resumed_from == 2
    assert_same_weights(weights(resumed.wrapper), expected)


@pytest.fixture(scope="module")
def interrupted(bench, tmp_path_factory) -> Path:
    """A run that crashed after step 3 (its last/ holds step 2); tests copy it."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Boom):
        run(bench, out, callbacks=[raise_after(3)])
    return out


def _interrupted(src: Path, out: Path) -> None:
    shutil.copytree(src, out, dirs_exist_ok=True)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _flip_byte(d / "dgs_weights.safetensors"), "checksum"),
        (lambda d: _truncate(d / OPTIMIZER_NAME), "checksum|truncated"),
        (lambda d: _truncate(d / STATE_NAME), "truncated or damaged"),
        (lambda d: _edit_state(d, global_step=99), "checksum"),
        (lambda d: (d / OPTIMIZER_NAME).unlink(), "incomplete"),
    ],
    ids=[
        "weights-bitflip",
        "optimizer-truncated",
        "state-truncated",
        "state-edited",
        "optimizer-missing",
    ],
)
def test_damaged_checkpoint_fails_clearly(bench, interrupted, tmp_path, damage, message):
    _interrupted(interrupted, tmp_path)
    damage(tmp_path / LAST_DIR)
    with pytest.raises(CheckpointError, match=message):
        run(bench, tmp_path)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_state(d: Path, **changes) -> None:
    state = json.loads((d / STATE_NAME).read_text())
    state.update(changes)
    (d / STATE_NAME).write_text(json.dumps(state))


def test_resume_refuses_other_settings_or_data(bench, interrupted, tmp_path):
    _interrupted(interrupted, tmp_path)
    with pytest.raises(TrainingConfigError, match="lr"):
        run(bench, tmp_path, lr=5e-4)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the failure
    victim = bench / "progan" / "0_real" / "000.png"
    original = victim.read_bytes()
    write_image(victim, False, 99, size=40)  # same name, other content
    try:
        with pytest.raises(TrainingConfigError, match="training data changed"):
            run(bench, tmp_path)
    finally:
        victim.write_bytes(original)
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        run(bench, tmp_path / "fresh", resume=True)
    fresh = run(bench, tmp_path, resume=False, epochs=1)  # start over
    assert fresh.resumed_from is None and fresh.global_step == 6


# ---------------------------------------------------------------------------------------------
# non-finite loss / gradient
# ---------------------------------------------------------------------------------------------


def nan_logits_at(step: int):
    """A callback that makes the image head output NaN during stage-2 step ``step``."""
    counter = {"calls": 0}

    def hook(module, inputs, output):
        counter["calls"] += 1
        return output * float("nan") if counter["calls"] == step else output

    def cb(event, state):
        if event == "train_begin":
            state.wrapper.image_head.register_forward_hook(hook)

    return cb


def nan_grad_at(step: int):
    counter = {"calls": 0}

    def hook(module, grad_input, grad_output):
        counter["calls"] += 1
        if counter["calls"] == step:
            return tuple(g * float("nan") if g is not None else None for g in grad_input)
        return None

    def cb(event, state):
        if event == "train_begin":
            state.wrapper.image_head.register_full_backward_hook(hook)

    return cb


def test_nonfinite_loss_raises_naming_the_step(bench, tmp_path):
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss \(nan\) at stage 2, epoch 1, step 3"
    ) as info:
        run(bench, tmp_path, epochs=1, stage1_epochs=1, callbacks=[nan_logits_at(3)])
    assert info.value.step == 3


def test_nonfinite_gradient_raises(bench, tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of lora\..*step 2"):
        run(bench, tmp_path, epochs=1, stage1_epochs=1, callbacks=[nan_grad_at(2)])


@pytest.mark.parametrize("inject", [nan_logits_at, nan_grad_at], ids=["loss", "gradient"])
def test_nonfinite_skip_leaves_weights_and_optimizer_untouched(bench, tmp_path, inject):
    snapshots = {}

    def snap(event, state):
        if event == "step_end" and state.global_step in (2, 3):
            opt = {
                k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)}
                for k, s in state.optimizer.state_dict()["state"].items()
            }
            snapshots[state.global_step] = (weights(state.wrapper), opt)

    result = run(
        bench, tmp_path, epochs=1, stage1_epochs=1, on_nonfinite="skip", callbacks=[inject(3), snap]
    )
    assert result.skipped_steps == 1 and result.global_step == 6
    assert_same_weights(snapshots[2][0], snapshots[3][0])
    for k, slots in snapshots[2][1].items():
        for n, v in slots.items():
            assert torch.equal(v, snapshots[3][1][k][n])
    records = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    skipped = [r for r in records if r.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and "non-finite" in skipped[0]["reason"]
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in result.wrapper.trainable_parameters())


# ---------------------------------------------------------------------------------------------
# stages, teacher cache, arguments
# ---------------------------------------------------------------------------------------------


def test_index_passed_only_for_deterministic_transforms(bench, tmp_path):
    for flip, expect_index in ((True, False), (False, True)):
        seen = []

        def spy(event, state, seen=seen):
            if event == "train_begin":
                original = state.wrapper.forward

                def forward(images, text, labels, index=None):
                    seen.append(index is not None)
                    return original(images, text, labels, index=index)

                state.wrapper.forward = forward

        run(bench, tmp_path / str(flip), flip=flip, epochs=1, stage1_epochs=1, callbacks=[spy])
        assert seen and set(seen) == {expect_index}


def test_stage_one_then_stage_two_from_it(bench, tmp_path):
    s1 = run(bench, tmp_path / "s1", stage=1, stage1_epochs=2)
    assert s1.global_step == 0 and len(s1.stage1_history) == 2
    w = weights(s1.wrapper)
    assert all(not v.any() for k, v in w.items() if "lora_B" in k)  # LoRA untouched in stage 1
    with pytest.raises(TrainingConfigError, match="teacher head"):
        run(bench, tmp_path / "s2", stage=2)
    s2 = run(bench, tmp_path / "s2", stage=2, epochs=1, init_from=tmp_path / "s1" / FINAL_DIR)
    assert s2.global_step == 6 and s2.stage1_history == []
    assert torch.equal(weights(s2.wrapper)["teacher.weight"], w["teacher.weight"])


def test_train_argument_errors(bench, tmp_path):
    with pytest.raises(TrainingConfigError, match="on_nonfinite"):
        run(bench, tmp_path, on_nonfinite="ignore")
    with pytest.raises(TrainingConfigError, match="batch_size"):
        run(bench, tmp_path, batch_size=0)
    with pytest.raises(TrainingConfigError, match="stage"):
        run(bench, tmp_path, stage=3)


def test_evaluate_degradations(reference_run, test_bench):
    result, _ = reference_run
    bundle = build_model("tiny")
    clean = evaluate(result.wrapper, test_bench, bundle.eval_transform)[os.fspath(test_bench)]
    jpeg = evaluate(
        result.wrapper,
        [test_bench],
        bundle.eval_transform,
        jpeg_quality=30,
        blur_sigma=1.0,
        resize_scale=0.5,
    )[os.fspath(test_bench)]
    assert clean.subsets == jpeg.subsets
    assert clean.to_dict() != jpeg.to_dict()
    with pytest.raises(ValueError, match="jpeg_quality"):
        evaluate(result.wrapper, [test_bench], bundle.eval_transform, jpeg_quality=0)


# ---------------------------------------------------------------------------------------------
# torchrun (2 CPU processes, gloo)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes(bench, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "dgsnet.cli",
        "train",
        os.fspath(bench),
        "--out",
        os.fspath(out),
        "--model",
        "tiny",
        "--epochs",
        "1",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--lora-dropout",
        "0.5",
        "--save-every",
        "2",
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert records[0]["world_size"] == 2
    assert [r["step"] for r in records if r["event"] == "step"] == [
        1,
        2,
        3,
        4,
    ]  # 16 images / (2 x 2)
    wrapper, _ = load_trained(out)
    assert any(p.abs().sum() > 0 for n, p in wrapper.named_trainable_parameters() if "lora_B" in n)
