"""Precision and compile options of the training engine, ``evaluate`` and the CLI.

What is checked here (CPU unless marked ``gpu``):

* bf16 training + evaluation end to end; the precision is recorded in ``run.json`` and in
  the checkpoint; a bf16 run resumed after a crash ends with **bit-identical** weights to the
  uninterrupted bf16 run (as the fp32 path does);
* fp16 (float16 autocast + ``torch.amp.GradScaler``; allowed on the CPU): the scaler state is
  checkpointed, restored on resume, and the resumed run is bit-identical too;
* resuming in another precision is refused (``TrainingConfigError``; exit 2 in the CLI); a
  checkpoint without the field (written before it existed) resumes as fp32 only;
* the TF32 flags are set during a run / an evaluation and restored afterwards;
* ``compile_image_tower`` (``torch.compile``, inductor on the CPU) gives the eager loss and
  gradients within ``1e-4`` relative error.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dgsnet import DGSConfig
from dgsnet.cli import main
from dgsnet.training import (
    LAST_DIR,
    LOG_NAME,
    STATE_NAME,
    Precision,
    TrainingConfigError,
    TrainOptions,
    compile_image_tower,
    evaluate,
    load_trained,
    predict_scores,
)
from dgsnet.training.state import write_state_json
from tests.helpers import batch, build, grads, make_bench, rel_norm_errors, zero_grads
from tests.helpers.cli import tiny_train_flags
from tests.helpers.training import Boom, assert_same_weights, train_tiny, weights

pytestmark = pytest.mark.usefixtures("one_thread")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def crash_after(k: int):
    def cb(event, state):
        if event == "step_end" and state.global_step == k:
            raise Boom(f"simulated crash after step {k}")

    return cb


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("data") / "train", n=4)


@pytest.fixture(scope="module")
def test_bench(tmp_path_factory) -> Path:
    return make_bench(
        tmp_path_factory.mktemp("data") / "test", subsets=("biggan",), n=3, seed=5, captions=False
    )


def run(root: Path, out: Path, device: str = "cpu", callbacks=(), **kw):
    kw = {"stage1_epochs": 1, **kw}  # one stage-1 epoch, not two
    return train_tiny(root, out, device=device, callbacks=callbacks, **kw)


def state_json(out: Path) -> dict:
    return json.loads((out / LAST_DIR / STATE_NAME).read_text())


@pytest.fixture(scope="module")
def bf16_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "run"
    result = run(bench, out, precision="bf16")
    return result, weights(result.wrapper)


# ------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------
def test_options_check_precision_and_compile():
    assert TrainOptions("x").precision == "fp32"
    assert TrainOptions("x", precision="BF16").precision == "bf16"
    with pytest.raises(TrainingConfigError, match="precision must be one of fp32, tf32"):
        TrainOptions("x", precision="fp64")
    with pytest.raises(TrainingConfigError, match="compile must be True or False"):
        TrainOptions("x", compile="yes")  # type: ignore[arg-type]
    p = Precision.parse("fp16", "cpu")
    assert p.autocast_dtype is torch.float16 and p.uses_scaler and p.tf32 is None
    assert Precision.parse("tf32", "cuda").tf32 is True
    assert Precision.parse("fp32", "cpu").make_scaler() is None


# ------------------------------------------------------------------------------------------
# bf16
# ------------------------------------------------------------------------------------------
def test_bf16_train_and_evaluate_end_to_end(bf16_run, test_bench):
    result, _ = bf16_run
    out = result.out_dir
    assert result.global_step == 12 and result.skipped_steps == 0
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["training"]["precision"] == "bf16"
    state = state_json(out)
    assert state["precision"] == "bf16" and state["grad_scaler"] is None
    steps = [json.loads(x) for x in (out / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["event"] == "step"]
    assert len(losses) == 12 and all(np.isfinite(losses))
    # float32 master weights
    assert all(p.dtype == torch.float32 for p in result.wrapper.trainable_parameters())

    wrapper, bundle = load_trained(out)
    t16 = evaluate(wrapper, [test_bench], bundle.eval_transform, batch_size=4, precision="bf16")
    t32 = evaluate(wrapper, [test_bench], bundle.eval_transform, batch_size=4)
    row16, row32 = t16[os.fspath(test_bench)]["biggan"], t32[os.fspath(test_bench)]["biggan"]
    assert row16.n_real == row32.n_real == 3 and row16.n_fake == row32.n_fake == 3
    from dgsnet.data import open_dataset

    ds = open_dataset(test_bench, transform=bundle.eval_transform)
    s16, *_ = predict_scores(wrapper, ds, batch_size=4, precision="bf16")
    s32, *_ = predict_scores(wrapper, ds, batch_size=4)
    assert s16.dtype == np.float64 and s16.shape == s32.shape == (6,)
    # bfloat16 keeps 8 significant bits: the probabilities agree to a few 1e-3
    assert np.abs(s16 - s32).max() <= 2e-2, np.abs(s16 - s32).max()
    assert not np.array_equal(s16, s32)  # autocast really ran in bfloat16
    with pytest.raises(TrainingConfigError, match="precision must be one of"):
        evaluate(wrapper, [test_bench], bundle.eval_transform, precision="half")


def test_bf16_resume_is_bit_identical(bench, tmp_path, bf16_run):
    _, expected = bf16_run
    with pytest.raises(Boom):
        run(bench, tmp_path, precision="bf16", callbacks=[crash_after(5)])
    assert state_json(tmp_path)["global_step"] == 4
    resumed = run(bench, tmp_path, precision="bf16")
    assert resumed.resumed_from == 4
    assert_same_weights(weights(resumed.wrapper), expected)


# ------------------------------------------------------------------------------------------
# fp16 + GradScaler (CPU float16 autocast)
# ------------------------------------------------------------------------------------------
def _fp16_resume_check(bench: Path, tmp_path: Path, device: str, exact: bool = True) -> None:
    full = run(bench, tmp_path / "a", device=device, precision="fp16", save_every=3)
    expected = weights(full.wrapper)
    log = [json.loads(x) for x in (tmp_path / "a" / LOG_NAME).read_text().splitlines()]
    steps = [r for r in log if r["event"] == "step"]
    assert all("loss_scale" in r for r in steps)
    # the default initial scale (2^16) overflows on this model: the scaler skips that step and
    # halves the scale (counted as a skipped step, not an error)
    assert any(r.get("overflow") for r in steps)
    assert full.skipped_steps == sum(bool(r.get("overflow")) for r in steps)

    seen: dict[str, dict] = {}

    def keep_scaler(event, state):
        if event == "checkpoint" and state.global_step == 3:
            seen["at3"] = json.loads((tmp_path / "b" / LAST_DIR / STATE_NAME).read_text())

    with pytest.raises(Boom):
        run(
            bench,
            tmp_path / "b",
            device=device,
            precision="fp16",
            save_every=3,
            callbacks=[keep_scaler, crash_after(4)],
        )
    saved = state_json(tmp_path / "b")
    assert saved["global_step"] == 3 and saved == seen["at3"]
    scaler = saved["grad_scaler"]
    assert set(scaler) >= {"scale", "growth_factor", "backoff_factor", "growth_interval"}
    scale_at3 = [r["loss_scale"] for r in steps if r["step"] == 4][0]
    assert scaler["scale"] == scale_at3  # the scale the 4th step used is the restored one

    restored: dict[str, float] = {}

    def first_scale(event, state):
        if event == "step_end" and "first" not in restored:
            restored["first"] = state.record["loss_scale"]

    resumed = run(
        bench,
        tmp_path / "b",
        device=device,
        precision="fp16",
        save_every=3,
        callbacks=[first_scale],
    )
    assert resumed.resumed_from == 3 and restored["first"] == scale_at3
    if exact:
        assert_same_weights(weights(resumed.wrapper), expected)
    else:  # CUDA without CUBLAS_WORKSPACE_CONFIG: the same to float32 rounding
        got = weights(resumed.wrapper)
        for k in expected:
            assert torch.allclose(got[k], expected[k], rtol=1e-4, atol=1e-6), k


def test_fp16_grad_scaler_resume_is_exact_cpu(bench, tmp_path):
    _fp16_resume_check(bench, tmp_path, "cpu")


@pytest.mark.gpu
@cuda
def test_fp16_grad_scaler_resume_is_exact_cuda(bench, tmp_path):
    """The scaler state round-trips exactly; the weights are compared to rtol 1e-4 (cuBLAS is
    bitwise repeatable only with ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts)."""
    _fp16_resume_check(bench, tmp_path, "cuda", exact=False)


def _runner(on_nonfinite: str, init_scale: float, poison: bool):
    from dgsnet.data.datasets import Batch
    from dgsnet.training.distributed import DistInfo
    from dgsnet.training.step import StepRunner

    w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant"))
    if poison:  # a gradient that is not finite whatever the loss scale
        w.image_head.weight.register_hook(lambda g: g * float("nan"))
    x, caps, y = batch()
    opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-3)
    policy = Precision.parse("fp16", "cpu")
    runner = StepRunner(
        model=w,
        optimizer=opt,
        named=list(w.named_trainable_parameters()),
        seed=0,
        dist=DistInfo(),
        device=torch.device("cpu"),
        pass_index=False,
        on_nonfinite=on_nonfinite,
        text_table=None,
        n_batches=1,
        autocast=policy.autocast,
        scaler=policy.make_scaler({"scale": init_scale, "growth_factor": 2.0,
                                   "backoff_factor": 0.5, "growth_interval": 2000,
                                   "_growth_tracker": 0}),
    )  # fmt: skip
    return runner, Batch(x, list(caps), y, torch.arange(len(y)), ["s"] * len(y)), w


def test_fp16_overflow_is_skipped_until_the_scale_falls_below_one():
    from dgsnet.errors import NonFiniteError

    runner, b, w = _runner("raise", 4.0, poison=True)
    before = {n: p.detach().clone() for n, p in w.named_trainable_parameters()}
    scales = []
    for step in (1, 2, 3):  # scale 4 -> 2 -> 1: overflows, skipped
        rec = runner(b, step, 0, step)
        assert rec["skipped"] and rec["overflow"], rec
        scales.append(rec["loss_scale"])
    assert scales == [4.0, 2.0, 1.0]
    with pytest.raises(NonFiniteError, match="even at fp16 loss scale 0.5"):
        runner(b, 4, 0, 4)
    for n, p in w.named_trainable_parameters():
        assert torch.equal(p.detach(), before[n]), n
    skip_runner, b, _ = _runner("skip", 0.5, poison=True)
    assert skip_runner(b, 1, 0, 1)["skipped"]
    ok_runner, b, _ = _runner("raise", 256.0, poison=False)
    rec = ok_runner(b, 1, 0, 1)
    assert not rec["skipped"] and rec["loss_scale"] == 256.0 and "losses" in rec


# ------------------------------------------------------------------------------------------
# resume in another precision; old run folders
# ------------------------------------------------------------------------------------------
@pytest.fixture
def interrupted_fp32(bench, tmp_path) -> Path:
    with pytest.raises(Boom):
        run(bench, tmp_path / "r", callbacks=[crash_after(3)], epochs=1)
    return tmp_path / "r"


def test_resume_in_other_precision_is_refused(bench, interrupted_fp32):
    with pytest.raises(TrainingConfigError, match=r"precision: checkpoint 'fp32', now 'bf16'"):
        run(bench, interrupted_fp32, precision="bf16", epochs=1)


def test_old_checkpoint_without_precision_resumes_as_fp32(bench, interrupted_fp32):
    state = state_json(interrupted_fp32)
    del state["resume_key"]["precision"], state["precision"], state["grad_scaler"]
    state.pop("checksum")
    write_state_json(interrupted_fp32 / LAST_DIR / STATE_NAME, state)  # a valid old checkpoint
    with pytest.raises(TrainingConfigError, match=r"precision: checkpoint 'fp32', now 'fp16'"):
        run(bench, interrupted_fp32, precision="fp16", epochs=1)
    resumed = run(bench, interrupted_fp32, epochs=1)
    assert resumed.resumed_from == 2 and resumed.global_step == 6


# ------------------------------------------------------------------------------------------
# TF32 flags
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "inside"), [("fp32", False), ("tf32", True)])
def test_tf32_flags_set_during_the_run_and_restored(bench, tmp_path, precision, inside):
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (flags[0].allow_tf32, flags[1].allow_tf32)
    seen = set()

    def look(event, state):
        seen.add((flags[0].allow_tf32, flags[1].allow_tf32))

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not inside
    try:
        run(bench, tmp_path, precision=precision, epochs=1, callbacks=[look])
        assert seen == {(inside, inside)}
        assert (flags[0].allow_tf32, flags[1].allow_tf32) == (not inside, not inside)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
@cuda
def test_tf32_on_cuda_changes_matmuls_and_stays_close():
    w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant"))
    w = w.cuda()
    x, caps, y = batch()
    x, y = x.cuda(), y.cuda()
    res = {}
    for name in ("fp32", "tf32"):
        with Precision.parse(name, "cuda").activate():
            assert torch.backends.cuda.matmul.allow_tf32 is (name == "tf32")
            zero_grads(w)
            w(x, caps, y).loss.backward()
            res[name] = grads(w)
    errs = rel_norm_errors(res["tf32"], res["fp32"])
    assert max(errs.values()) <= 1e-2, errs


# ------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_image_tower_equals_eager():
    """Inductor on the CPU reorders float32 sums: loss and gradients agree to 1e-4 relative."""
    pytest.importorskip("torch._inductor")
    w, _ = build(DGSConfig(lora_dropout=0.0, align_scale="invariant"))
    x, caps, y = batch()
    zero_grads(w)
    eager_loss = w(x, caps, y).loss
    eager_loss.backward()
    eager = grads(w)
    wc = copy.deepcopy(w)
    n = compile_image_tower(wc.encoder)
    assert n >= 1
    assert [k for k, _ in wc.named_parameters()] == [k for k, _ in w.named_parameters()]
    zero_grads(wc)
    loss = wc(x, caps, y).loss
    loss.backward()
    a, e = float(loss.detach()), float(eager_loss.detach())
    assert abs(a - e) <= 1e-4 * abs(e)
    errs = rel_norm_errors(grads(wc), eager)
    assert max(errs.values()) <= 1e-4, errs


def test_compile_option_compiles_the_image_tower_before_stage2(bench, tmp_path, monkeypatch):
    import dgsnet.training.trainer as trainer_mod

    calls = []
    monkeypatch.setattr(trainer_mod, "compile_image_tower", lambda enc: calls.append(enc) or 1)
    result = run(bench, tmp_path, compile=True, epochs=1)
    assert calls == [result.wrapper.encoder]
    calls.clear()
    run(bench, tmp_path / "b", epochs=1)
    assert calls == []  # opt-in


@pytest.mark.gpu
@cuda
def test_bf16_train_and_evaluate_on_cuda(bench, test_bench, tmp_path):
    """The CUDA path: pinned loaders, non-blocking copies, bf16 autocast on the device."""
    result = run(bench, tmp_path, device="cuda", precision="bf16", epochs=1)
    assert result.skipped_steps == 0
    wrapper, bundle = load_trained(tmp_path, device="cuda")
    t16 = evaluate(wrapper, [test_bench], bundle.eval_transform, batch_size=4, precision="bf16")
    t32 = evaluate(wrapper, [test_bench], bundle.eval_transform, batch_size=4)
    a, b = t16[os.fspath(test_bench)]["biggan"], t32[os.fspath(test_bench)]["biggan"]
    assert a.n_real == b.n_real == 3


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
FAST = tiny_train_flags(lora_dropout=None)


def test_cli_bf16_train_eval_predict_and_refused_resume(bench, test_bench, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", os.fspath(bench), "--out", os.fspath(out), *FAST,
                 "--precision", "bf16"]) == 0  # fmt: skip
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["training"]["precision"] == "bf16"
    assert run_json["options"]["precision"] == "bf16" and run_json["options"]["compile"] is False
    capsys.readouterr()
    # the finished run's checkpoint is bf16: continuing it in fp32 is refused (exit 2)
    rc = main(["train", os.fspath(bench), "--out", os.fspath(out), *FAST, "--epochs", "2"])
    assert rc == 2
    assert "precision: checkpoint 'bf16', now 'fp32'" in capsys.readouterr().err
    assert main(["eval", os.fspath(out), os.fspath(test_bench), "--precision", "bf16",
                 "--workers", "0", "--quiet"]) == 0  # fmt: skip
    assert "biggan" in capsys.readouterr().out
    img = next(Path(test_bench).rglob("*.png"))
    assert main(["predict", os.fspath(out), os.fspath(img), "--precision", "bf16", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,score,label_pred" and len(lines) == 2
    assert main(["predict", os.fspath(out), os.fspath(img), "--precision", "fp64"]) == 2


# ------------------------------------------------------------------------------------------
# the GPU benchmark's Python part, on the CPU with the tiny model
# ------------------------------------------------------------------------------------------
def test_precision_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "precision_step.py"
    spec = importlib.util.spec_from_file_location("precision_step", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "p.json"
    argv = ["--tiny", "--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "1"]
    assert mod.main([*argv, "--json", os.fspath(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["precision"] for r in data["results"]] == ["fp32", "tf32", "bf16", "fp16"]
    assert all(r["median_s"] > 0 and np.isfinite(r["last_loss"]) for r in data["results"])
    text = capsys.readouterr().out
    assert "x fp32" in text and "fp16" in text
