"""Data parallelism: DGSWrapper inside ``torch.nn.parallel.DistributedDataParallel``.

Two CPU processes (gloo, 127.0.0.1 on a free port), each holding an identical wrapper (tiny
open_clip model, same seed, non-zero LoRA B, float64), each fed one half of a batch of 6. After
one backward the all-reduced gradients are compared with those of one process on the whole
batch:

* ``align_scale="invariant"``: equal (relative error <= 1e-12), for DDP's default mode,
  ``static_graph=True`` and ``find_unused_parameters=True``; a few Adam steps keep the ranks
  bitwise in sync and equal to the single-process run.
* ``align_scale="reference"`` (the released code's ``lambda/B`` weighting): each rank weights
  the alignment by ``lambda/B_local``; DDP's averaging then gives exactly the single-process
  gradient of the whole batch with ``align_weight = lambda * world_size`` (with ``eps=0``; with
  ``eps>0`` only approximately, because the per-rank reference carries ``1/B_local``), and
  *not* the one with ``lambda``.

All scenarios run in one spawn of two processes (most of the ~20 s is importing torch and
open_clip twice); rank 0 also computes the single-process references, and this process only
compares the saved tensors. See docs/scaling.md.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
    pytest.mark.usefixtures("one_thread"),
]

WORLD = 2
LAM = 0.2
STEPS = 3
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**kw):
    from dgsnet import DGSConfig

    return DGSConfig(lora_dropout=0.0, **kw)


def _grads(w) -> dict[str, torch.Tensor]:
    from tests.helpers import grads

    return grads(w)


def _params(w) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in w.named_trainable_parameters()}


def _single_process_references() -> dict[str, dict[str, torch.Tensor]]:
    """One process, the whole batch of 6 (no process group involved)."""
    from tests.helpers import batch, build

    out: dict[str, dict[str, torch.Tensor]] = {}
    x, caps, y = batch(dtype=torch.float64)
    for name, cfg in {
        "invariant": _config(align_scale="invariant"),
        "reference_lam": _config(eps=0.0, align_weight=LAM),
        "reference_lam_world": _config(eps=0.0, align_weight=LAM * WORLD),
    }.items():
        w, _ = build(cfg, dtype=torch.float64)
        w(x, caps, y).loss.backward()
        out[name] = _grads(w)
    w, _ = build(_config(align_scale="invariant"), dtype=torch.float64)
    opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
    for step in range(STEPS):
        x, caps, y = batch(seed=step, dtype=torch.float64)
        opt.zero_grad(set_to_none=True)
        w(x, caps, y).loss.backward()
        opt.step()
    out["adam"] = _params(w)
    return out


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    """One rank: every scenario in turn, results saved to ``outdir/rank{rank}.pt``."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tests.helpers import batch, build

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        share = slice(rank * 6 // world, (rank + 1) * 6 // world)
        results: dict[str, object] = {}

        def one_step(name, cfg, **ddp_kw):
            w, _ = build(cfg, dtype=torch.float64)
            model = DDP(w, **ddp_kw)
            x, caps, y = batch(dtype=torch.float64)
            out = model(x[share], caps[share], y[share])
            results[f"{name}.type"] = type(out).__name__
            out.loss.backward()
            results[name] = _grads(w)
            results[f"{name}.stats"] = out.stats

        one_step("invariant", _config(align_scale="invariant"))
        one_step("invariant_static", _config(align_scale="invariant"), static_graph=True)
        one_step("invariant_unused", _config(align_scale="invariant"), find_unused_parameters=True)
        one_step("reference", _config(eps=0.0, align_weight=LAM))

        # a few Adam steps, each rank on its half of a fresh batch
        w, _ = build(_config(align_scale="invariant"), dtype=torch.float64)
        model = DDP(w)
        opt = torch.optim.Adam(w.trainable_parameters(), lr=1e-2)
        for step in range(STEPS):
            x, caps, y = batch(seed=step, dtype=torch.float64)
            opt.zero_grad(set_to_none=True)
            model(x[share], caps[share], y[share]).loss.backward()
            opt.step()
        results["adam"] = _params(w)

        # FSDP (both APIs): open_clip's scalar logit_scale cannot be sharded; it is frozen and
        # unused by the wrapper, so it is left out of the sharding (ignored)
        results["fsdp2"] = _fsdp_step("fsdp2", world, share)
        results["fsdp1"] = _fsdp_step("fsdp1", world, share)

        # plain mode (no surgery): the text head gets no gradient, so DDP needs
        # find_unused_parameters=True; two steps prove the reducer is happy
        w, _ = build(_config(suppression=False, alignment=False), dtype=torch.float64)
        model = DDP(w, find_unused_parameters=True)
        for _ in range(2):
            x, caps, y = batch(dtype=torch.float64)
            w.zero_grad(set_to_none=True)
            model(x[share], None, y[share]).loss.backward()
        results["plain_ok"] = True

        if rank == 0:
            results["single"] = _single_process_references()
        torch.save(results, Path(outdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fsdp_step(api: str, world: int, share: slice) -> dict[str, torch.Tensor] | str:
    """One step under FSDP; the full (unsharded) gradients, or why FSDP is unavailable."""
    import contextlib

    from tests.helpers import batch, build

    w, _ = build(_config(align_scale="invariant"), dtype=torch.float64)
    scalars = [p for p in w.parameters() if p.dim() == 0]
    try:
        if api == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for block in w.model.visual.transformer.resblocks:
                fully_shard(block, mesh=mesh)
            fully_shard(w, mesh=mesh, ignored_params=set(scalars))
            model, gather = w, contextlib.nullcontext()
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            model = FSDP(
                w, use_orig_params=True, device_id=torch.device("cpu"), ignored_states=scalars
            )
            gather = None
    except (ImportError, TypeError) as exc:  # an older torch without this API / argument
        return f"unavailable: {exc}"
    x, caps, y = batch(dtype=torch.float64)
    model(x[share], caps[share], y[share]).loss.backward()
    if gather is None:
        gather = FSDP.summon_full_params(model, with_grads=True)
    out = {}
    with gather:
        for name, p in w.named_trainable_parameters():
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = g.detach().clone().view(p.shape)
    return out


def _launch(outdir: Path) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _worker,
        args=(WORLD, _free_port(), str(outdir)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} DDP processes did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:  # only the processes this test started
            if p.is_alive():
                p.kill()
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("ddp"))


def _max_rel(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in a)


@pytest.mark.parametrize("mode", ["invariant", "invariant_static", "invariant_unused"])
def test_ddp_invariant_scaling_equals_single_process_full_batch(ranks, mode):
    single = ranks[0]["single"]["invariant"]
    for r, res in enumerate(ranks):
        assert res[f"{mode}.type"] == "DGSOutput"
        err = _max_rel(res[mode], single)
        assert err <= 1e-12, f"rank {r}, {mode}: relative error {err:.3e}"
        assert {"grad_norm_in", "cos_harm", "cos_help"} <= set(res[f"{mode}.stats"])
    # the all-reduced gradients are identical on every rank
    for k in ranks[0][mode]:
        assert torch.equal(ranks[0][mode][k], ranks[1][mode][k]), k


def test_ddp_reference_scaling_is_lambda_times_world_size(ranks):
    """Per rank the alignment is weighted lambda/B_local; averaged over the ranks that is the
    whole batch's gradient with align_weight = lambda * world_size (eps=0), not lambda."""
    single = ranks[0]["single"]
    for r, res in enumerate(ranks):
        err = _max_rel(res["reference"], single["reference_lam_world"])
        assert err <= 1e-12, f"rank {r}: relative error {err:.3e}"
        lora = {k: v for k, v in res["reference"].items() if "lora" in k}
        other = {k: single["reference_lam"][k] for k in lora}
        assert _max_rel(lora, other) > 1e-6  # differs from the single-process lambda run


def test_ddp_adam_steps_stay_in_sync_and_match_single_process(ranks):
    single = ranks[0]["single"]["adam"]
    for k in single:
        assert torch.equal(ranks[0]["adam"][k], ranks[1]["adam"][k]), k
    assert _max_rel(ranks[0]["adam"], single) <= 1e-9


@pytest.mark.parametrize("api", ["fsdp2", "fsdp1"])
def test_fsdp_on_cpu_equals_single_process_full_batch(ranks, api):
    """FSDP (gloo, CPU) shards the image tower; gradients as for DDP (docs/scaling.md)."""
    single = ranks[0]["single"]["invariant"]
    for r, res in enumerate(ranks):
        got = res[api]
        if isinstance(got, str):
            pytest.skip(f"{api} {got}")
        err = _max_rel(got, single)
        assert err <= 1e-10, f"rank {r}, {api}: relative error {err:.3e}"


def test_ddp_plain_mode_with_find_unused_parameters(ranks):
    assert all(res["plain_ok"] for res in ranks)


def test_dgs_output_is_a_pytree_node():
    """DDP's output handling flattens with torch's pytree: DGSOutput must not be a leaf."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    from dgsnet import DGSOutput
    from dgsnet.surgery import SurgeryStats

    out = DGSOutput(torch.ones(()), torch.ones(2, 1), {"image": torch.zeros(())}, SurgeryStats())
    leaves, spec = tree_flatten(out)
    assert sum(isinstance(x, torch.Tensor) for x in leaves) == 3
    back = tree_unflatten(leaves, spec)
    assert isinstance(back, DGSOutput) and back.surgery is out.surgery


# ------------------------------------------------------------------------------------------
# Hugging Face Accelerate: examples/accelerate_train.py
# ------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "accelerate_train.py"
TINY_ARGS = ["--tiny", "--cpu", "--samples", "32", "--steps", "3", "--no-shuffle"]


def _run_example_in_process(argv):
    import importlib.util

    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    spec = importlib.util.spec_from_file_location("dgs_accelerate_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    AcceleratorState._reset_state(True)  # Accelerate keeps one global state per process
    try:
        return module.main(argv)
    finally:
        AcceleratorState._reset_state(True)


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "checkpoint" / "dgs_weights.safetensors")


@pytest.fixture(scope="module")
def accelerate_single(tmp_path_factory):
    """One process, 8 images a step: the run the two-process one is compared with."""
    out = tmp_path_factory.mktemp("accelerate_single")
    summary = _run_example_in_process([*TINY_ARGS, "--batch-size", "8", "--out", str(out)])
    return out, summary


def _check_single(out: Path, summary: dict, precision: str) -> None:
    from dgsnet import DGSWrapper
    from tests.helpers import open_clip_tokenizer, tiny_open_clip

    assert summary["world_size"] == 1 and summary["mixed_precision"] == precision
    assert len(summary["losses"]) == 3 and summary["finite"]
    loaded = DGSWrapper.from_pretrained(out / "checkpoint", tiny_open_clip(), open_clip_tokenizer())
    assert loaded.config.align_scale == "invariant"


def test_accelerate_example_single_process(accelerate_single):
    _check_single(*accelerate_single, "no")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_accelerate_example_single_process_mixed_precision(tmp_path, precision):
    """bf16: autocast; fp16: autocast and Accelerate's GradScaler (both on the CPU here)."""
    summary = _run_example_in_process(
        [*TINY_ARGS, "--batch-size", "8", "--mixed-precision", precision, "--out", str(tmp_path)]
    )
    _check_single(tmp_path, summary, precision)


@pytest.mark.slow
def test_accelerate_example_two_processes_match_one(tmp_path, accelerate_single):
    """torchrun, 2 CPU processes x 4 images == 1 process x 8 images (invariant scaling)."""
    import json
    import subprocess

    single, _ = accelerate_single
    multi = tmp_path / "multi"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(EXAMPLE),
        *TINY_ARGS,
        "--batch-size",
        "4",
        "--out",
        str(multi),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((multi / f"summary_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["distributed_type"].endswith("MULTI_CPU")
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # ranks in sync
    a, b = _checkpoint(multi), _checkpoint(single)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
