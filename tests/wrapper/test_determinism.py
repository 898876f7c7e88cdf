"""Determinism on the CPU: the same seed and data give bit-identical gradients and weights.

Two fresh runs (new model, new wrapper, new optimizer, ``torch.manual_seed`` first) of a few
Adam steps, with LoRA dropout on (so the RNG stream matters), the text cache and the teacher
cache in use, must agree bit for bit, at every step. A third run in a fresh interpreter with a
different ``PYTHONHASHSEED`` must agree too (nothing may depend on set/hash order).

CUDA is not covered here (see docs/scaling.md, "Determinism"): cuBLAS and atomics-based
kernels need ``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgsnet import DGSConfig
from tests.helpers import batch, build

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def run(seed: int = 0, config: DGSConfig | None = None, steps: int = STEPS):
    """Returns per-step gradients and the final weights."""
    config = config or DGSConfig(lora_dropout=0.1)
    torch.manual_seed(seed)
    w, _ = build(config, seed=seed)
    w.train()
    opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
    history = []
    for step in range(steps):
        x, caps, y = batch(seed=step)
        out = w(x, caps, y, index=torch.arange(6) + 6 * (step % 2))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        history.append({n: p.grad.detach().clone() for n, p in w.named_trainable_parameters()})
        opt.step()
    weights = {n: p.detach().clone() for n, p in w.named_trainable_parameters()}
    return history, weights


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def first_run():
    return run()


def test_two_fresh_runs_are_bit_identical(first_run):
    hist_a, w_a = first_run
    hist_b, w_b = run()
    for step, (ga, gb) in enumerate(zip(hist_a, hist_b, strict=True)):
        for name in ga:
            assert torch.equal(ga[name], gb[name]), f"step {step}: gradient of {name} differs"
    for name in w_a:
        assert torch.equal(w_a[name], w_b[name]), f"weights of {name} differ"
    _, initial = run(steps=0)
    assert digest(initial) != digest(w_a)  # it did train


def test_a_different_seed_changes_the_result(first_run):
    _, w_a = first_run
    _, w_c = run(seed=1)
    assert digest(w_a) != digest(w_c)


@pytest.mark.parametrize(
    "config",
    [
        DGSConfig(lora_dropout=0.1, order="project_then_align", align_scale="invariant"),
        DGSConfig(lora_dropout=0.0, teacher="copy", shared_trunk=False),
    ],
    ids=["paper-order-invariant", "teacher-copy"],
)
def test_other_configurations_are_deterministic(config):
    assert digest(run(config=config, steps=2)[1]) == digest(run(config=config, steps=2)[1])


def test_deterministic_algorithms_mode_agrees(first_run):
    """``torch.use_deterministic_algorithms(True)`` changes nothing on the CPU (and raises
    nowhere in the step)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, w_d = run()
    finally:
        torch.use_deterministic_algorithms(before)
    assert digest(w_d) == digest(first_run[1])


@pytest.mark.slow
def test_fresh_interpreter_with_other_hash_seed_agrees(first_run):
    code = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()});"
        "from tests.wrapper.test_determinism import run, digest; print(digest(run()[1]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    assert proc.stdout.strip().splitlines()[-1] == digest(first_run[1]), (
        f"fresh interpreter differs (threads here {threads}); stdout {proc.stdout[-500:]!r}"
    )
