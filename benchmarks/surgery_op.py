#!/usr/bin/env python
r"""Cost of the gradient-surgery backward, against a plain identity backward and against the
memory-bound floor.

For each feature shape ``(B, D)`` one process times, in float32:

``identity``      ``torch.autograd.grad`` of ``y = x.view_as(x)``: what autograd costs for a
                  node that passes the gradient through untouched;
``dgs.eager``     the same through ``GradientSurgery.apply(x, rule, refs)`` with the DGS-Net
                  reference composition ``Compose([PriorAlignment(), OrthogonalSuppression()])``
                  (reads the gradient and both references, writes the new gradient);
``dgs.fused``     the same with ``fuse(rule)`` (``torch.compile``);
``os.eager`` / ``os.fused``   ``OrthogonalSuppression()`` alone (one reference).

Each variant builds its graph once (``retain_graph=True``) and times the backward alone. Round
``r`` runs the variants in an order rotated by ``r`` (none always first, none always after the
same neighbour), after ``--warmup`` untimed rounds (they also trigger the fused rules'
compilation, one fresh static compilation per shape), and the table gives the median over
``--reps`` rounds. Interleaving has a cost for the small, cache-resident variants: an eager
variant that runs before a fused one streams tens of MiB of temporaries through the caches,
so the fused one finds its inputs evicted and dirty lines to write back. ``--only`` times a
subset; ``--flush-mib 64`` evicts the caches before every call, so that all variants run cold.

The floor: the op must read the gradient and each reference and write the result, so
``bytes = (2 + n_refs) * B * D * 4``; ``floor = bytes / bandwidth``, with the bandwidth measured
in the same run as ``2 * N / median time of dst.copy_(src)`` on a ``--copy-mib`` MiB buffer,
timed right before and right after each shape's loop (the mean of the two is used; both are
printed, so that a drifting machine shows).
``x floor`` is ``median / floor``, ``- identity`` the median minus the identity's median
(the surgery's own cost on top of autograd's).

CPU (default)::

    MALLOC_MMAP_THRESHOLD_=16777216 .venv/bin/python benchmarks/surgery_op.py

PyTorch's CPU tensors come from ``malloc``. ``MALLOC_MMAP_THRESHOLD_`` keeps buffers of a few MiB
off ``mmap`` (so that each new gradient is not page-faulted in afresh), but setting it also fixes
glibc's trim threshold at 128 KiB, and a freed multi-MiB buffer at the top of the heap is then
handed back to the kernel and faulted in again on the next allocation. Add
``MALLOC_TRIM_THRESHOLD_=1073741824`` to time the ops rather than the page faults (the header
line shows both settings).

On a CPU shared with other busy processes, wall-clock times mostly measure the scheduler (and
multi-threaded kernels stall on their thread barriers); time one thread's CPU time instead::

    MALLOC_MMAP_THRESHOLD_=16777216 .venv/bin/python benchmarks/surgery_op.py \
        --threads 1 --clock cpu

CUDA::

    python benchmarks/surgery_op.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dgsnet.surgery import (  # noqa: E402
    Compose,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryRule,
    fuse,
)

DEFAULT_SIZES = "32x768,256x768,1024x1024"
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        b, d = item.lower().split("x")
        sizes.append((int(b), int(d)))
    return sizes


class Timer:
    """Seconds one call takes: CUDA events on a GPU; on a CPU ``time.perf_counter`` (wall
    clock) or, with ``clock="cpu"``, ``time.process_time`` (CPU time of the whole process:
    unaffected by the time other processes hold the cores, meaningful with one thread)."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.cuda = device.type == "cuda"
        self.now = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = self.now()
        fn()
        return self.now() - t0


class CopyProbe:
    """``dst.copy_(src)`` on a large buffer: reads and writes ``nbytes`` each."""

    def __init__(self, device: torch.device, mib: int) -> None:
        n = mib * 2**20 // 4
        self.src = torch.randn(n, device=device)
        self.dst = torch.empty_like(self.src)
        self.nbytes = n * 4
        for _ in range(3):
            self()

    def __call__(self) -> object:
        return self.dst.copy_(self.src)

    def bandwidth(self, seconds: float) -> float:
        return 2 * self.nbytes / seconds


def backward_fn(
    x: torch.Tensor, grad: torch.Tensor, rule: SurgeryRule | None, refs: dict[str, torch.Tensor]
) -> Callable[[], object]:
    leaf = x.detach().requires_grad_(True)
    y = leaf.view_as(leaf) if rule is None else GradientSurgery.apply(leaf, rule, refs)

    def run() -> object:
        return torch.autograd.grad(y, leaf, grad, retain_graph=True)

    return run


def bench_size(
    b: int, d: int, device: torch.device, args: argparse.Namespace, timer: Timer, probe: CopyProbe
) -> tuple[list[dict], float]:
    gen = torch.Generator().manual_seed(b * 100003 + d)

    def randn() -> torch.Tensor:
        return torch.randn(b, d, generator=gen).to(device)

    x, grad = randn(), randn()
    refs = {"harm": randn(), "help": randn()}
    dgs = Compose([PriorAlignment(), OrthogonalSuppression()])
    ortho = OrthogonalSuppression()
    compile_kwargs = {} if args.dynamic is None else {"dynamic": args.dynamic}
    variants: dict[str, tuple[Callable[[], object], int]] = {
        "identity": (backward_fn(x, grad, None, refs), 0),
        "dgs.eager": (backward_fn(x, grad, dgs, refs), 2),
        "dgs.fused": (backward_fn(x, grad, fuse(dgs, **compile_kwargs), refs), 2),
        "os.eager": (backward_fn(x, grad, ortho, refs), 1),
        "os.fused": (backward_fn(x, grad, fuse(ortho, **compile_kwargs), refs), 1),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k == "identity" or k in args.only}

    # the fused and eager results agree (the benchmark measures the same math)
    for name in ("dgs", "os"):
        if f"{name}.eager" in variants and f"{name}.fused" in variants:
            (e,) = variants[f"{name}.eager"][0]()
            (f,) = variants[f"{name}.fused"][0]()
            dev = float((e - f).abs().max())
            if dev > 1e-6:
                raise SystemExit(f"{name}: fused differs from eager by {dev:.3e}")

    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    flush = torch.ones(args.flush_mib * 2**18, device=device) if args.flush_mib else None
    # the copy bandwidth right before and right after this shape's loop (not inside it: a
    # large copy between the variants would evict their data from the cache and, on a busy
    # machine, use up the time slice of whatever runs next)
    copies = [timer(probe) for _ in range(args.copy_reps)]
    for r in range(args.warmup + args.reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            if flush is not None:
                # untimed: evict the caches, reading (clean lines: nothing to write back after)
                flush.sum()
            t = timer(variants[k][0])
            if r >= args.warmup:
                times[k].append(t)

    before = probe.bandwidth(statistics.median(copies))
    after = probe.bandwidth(statistics.median([timer(probe) for _ in range(args.copy_reps)]))
    bandwidth = (before + after) / 2
    base = statistics.median(times["identity"])
    rows = []
    for k in names:
        med = statistics.median(times[k])
        n_refs = variants[k][1]
        nbytes = (2 + n_refs) * b * d * 4 if k != "identity" else 0
        floor = nbytes / bandwidth if nbytes else None
        q = statistics.quantiles(times[k], n=10)
        rows.append(
            {
                "B": b,
                "D": d,
                "variant": k,
                "median_us": med * 1e6,
                "p10_us": q[0] * 1e6,
                "p90_us": q[-1] * 1e6,
                "floor_us": floor * 1e6 if floor else None,
                "x_floor": med / floor if floor else None,
                "over_identity_us": (med - base) * 1e6,
                "mbytes": nbytes / 1e6,
            }
        )
    return rows, (before, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxD")
    parser.add_argument("--reps", type=int, default=300, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=30, help="untimed rounds")
    parser.add_argument("--copy-mib", type=int, default=256, help="copy-bandwidth buffer, MiB")
    parser.add_argument("--copy-reps", type=int, default=15, help="copies before/after a shape")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="CPU timer: wall clock, or process CPU time (for a busy machine; use --threads 1)",
    )
    parser.add_argument(
        "--dynamic",
        choices=["none", "true", "false"],
        default="none",
        help="torch.compile(dynamic=...) for the fused rules (default: fuse()'s default)",
    )
    parser.add_argument("--only", nargs="*", help="variants to run besides identity")
    parser.add_argument(
        "--flush-mib",
        type=int,
        default=0,
        help="before each timed call, read a buffer of this many MiB (untimed) to evict the "
        "caches: every variant then reads its inputs from memory, as the floor assumes "
        "(0: off, the default; 64 or more covers a 32 MiB L3)",
    )
    args = parser.parse_args(argv)
    args.dynamic = {"none": None, "true": True, "false": False}[args.dynamic]

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and device.type == "cpu" and torch.get_num_threads() != 1:
        print("note: --clock cpu adds up the CPU time of all threads; use it with --threads 1")
    timer = Timer(device, args.clock)
    probe = CopyProbe(device, args.copy_mib)

    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile fallback must not go unseen
        for b, d in parse_sizes(args.sizes):
            results.append(bench_size(b, d, device, args, timer, probe))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {dev_name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"float32, {args.reps} timed rounds after {args.warmup} warm-up rounds, "
        f"{'CUDA events' if device.type == 'cuda' else args.clock + ' clock'}"
        + (f", caches flushed ({args.flush_mib} MiB) before each call" if args.flush_mib else "")
    )
    if device.type == "cpu":
        malloc = {k: os.environ.get(k, "unset") for k in MALLOC_VARS}
        print(", ".join(f"{k}={v}" for k, v in malloc.items()))
    print(
        f"floor = bytes moved / copy bandwidth, the mean of the bandwidths of dst.copy_(src) on "
        f"{args.copy_mib} MiB right before and right after each shape's loop"
    )
    header = (
        f"{'B':>5} {'D':>5}  {'variant':<10} {'MB moved':>8} {'median us':>10} "
        f"{'p10-p90 us':>17} {'floor us':>9} {'x floor':>8} {'- identity us':>14}"
    )
    print(header)
    print("-" * len(header))
    for i, (rows, (before, after)) in enumerate(results):
        if i:
            print()
        for r in rows:
            floor = f"{r['floor_us']:9.1f}" if r["floor_us"] is not None else f"{'-':>9}"
            ratio = f"{r['x_floor']:8.2f}" if r["x_floor"] is not None else f"{'-':>8}"
            spread = f"{r['p10_us']:.1f}-{r['p90_us']:.1f}"
            print(
                f"{r['B']:>5} {r['D']:>5}  {r['variant']:<10} {r['mbytes']:8.2f} "
                f"{r['median_us']:10.1f} "
                f"{spread:>17} {floor} {ratio} {r['over_identity_us']:14.1f}"
            )
        print(f"{'':>12} copy bandwidth {before / 1e9:.1f} GB/s before, {after / 1e9:.1f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
