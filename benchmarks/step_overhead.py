#!/usr/bin/env python
r"""Cost of a DGS training step, measured side by side with plain LoRA and the reference code.

One process times every variant, interleaved in the same loop (round ``r`` runs the variants
in an order rotated by ``r``, so no variant always runs first or after the same neighbour),
after ``--warmup`` untimed rounds, and reports the median over ``--rounds`` rounds. All
training variants wrap the same randomly initialised open_clip model (same seed, copied), see
the same images and labels, and train with Adam (lr 1e-4) over LoRA + image head (+ text head).

Variants (``LoRA`` = rank ``--rank``, alpha = rank, dropout 0.8, on q/k/v, c_fc, c_proj):

``A``         plain LoRA fine-tuning step: ``DGSWrapper`` with ``DGSConfig(suppression=False,
              alignment=False)``: student forward, BCE, backward, Adam step. LoRA on every block.
``B.cold``    ``DGSWrapper`` default config (DGS), LoRA on every block, *first epoch, nothing
              cached*: every step brings captions never seen before (so the text tower runs on
              all B captions) and dataset indices never seen before (so the teacher forward runs;
              its logits are stored in the teacher cache, as in a real first epoch).
``B.warm``    the same wrapper, *a later epoch*: the batch's captions are in the text cache and
              its indices in the teacher cache (filled by an earlier pass), so neither the text
              tower nor the teacher runs.
``A.last4``   as ``A`` with LoRA on the last 4 blocks only (``lora_layers=[-4,-3,-2,-1]``).
``B.last4``   as ``B.cold`` (nothing cached) with LoRA on the last 4 blocks only: the frozen
              trunk below runs once for teacher and student (shared trunk).
``B.last4.tw`` as ``B.last4`` but with the captions in the text cache (text warm) and no
              dataset indices (so the teacher still runs, on the shared trunk): e.g. a later epoch
              trained without ``index=``. Isolates the teacher's cost with a shared trunk.
``C``         the step written the way the released reference code does it: a deep-copied
              teacher model (``copy.deepcopy`` of the pristine CLIP model, frozen, eval mode),
              tokenizer + text forward of every caption every step, ``torch.autograd.grad`` for
              both reference gradients, a backward hook on the student features doing the
              projection, L_help as a loss term, backward, Adam step. Same LoRA as ``B``.

Inference timers (on ``B``'s wrapper, in eval mode): ``teacher`` = ``encode_teacher(x)``
(adapters off, no grad), ``text`` = ``encode_text`` of B fresh captions (cold),
``predict`` = ``DGSWrapper.predict(x)``, ``forward`` = a plain forward of the fine-tuned model
(``image_head(model.encode_image(x))`` under ``no_grad``).

FLOPs: the first warm-up round runs under a FLOP counter (matmuls, convolutions, attention;
forward and backward), so each ratio is also printed as a ratio of counted FLOPs: the
machine-independent part of the cost model (``docs/performance.md``).

Clocks: wall time (default) and, on the CPU, process CPU time too; ``--clock`` picks the one the
targets are judged on. On a machine shared with other jobs, ``--threads 1 --clock cpu`` is the
robust choice: a single-threaded process's CPU time does not count the time it waits for a core.

Peak memory: one subprocess per training variant (run first, while the launcher is small: a
child's ``ru_maxrss`` starts at its parent's resident size) builds only what that variant needs,
runs ``--mem-steps`` steps and reports ``ru_maxrss`` (process peak RSS, CPU; ``VmHWM`` as a
cross-check) or ``torch.cuda.max_memory_allocated`` (CUDA).

CPU (default: all cores, wall clock, N = 5; 465 s on the 2-core development machine)::

    MALLOC_MMAP_THRESHOLD_=16777216 .venv/bin/python benchmarks/step_overhead.py

CPU, robust to other load (about 13 minutes)::

    MALLOC_MMAP_THRESHOLD_=16777216 .venv/bin/python benchmarks/step_overhead.py \
        --threads 1 --clock cpu --rounds 7

GPU (a lent CUDA device)::

    python benchmarks/step_overhead.py --device cuda --dtype bf16 --model ViT-L-14 --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dgsnet import DGSConfig, DGSWrapper  # noqa: E402

TRAIN_VARIANTS = ("A", "B.cold", "B.warm", "A.last4", "B.last4", "B.last4.tw", "C")
MEMORY_VARIANTS = ("A", "B.cold", "B.warm", "A.last4", "B.last4", "C")
INFER_VARIANTS = ("teacher", "text", "predict", "forward")
LAST4 = [-4, -3, -2, -1]

_ADJ = ["red", "small", "old", "bright", "wooden", "blurry", "green", "large", "shiny", "dark"]
_NOUN = ["cat", "car", "chair", "horse", "house", "dog", "bicycle", "table", "tree", "boat"]
_PLACE = [
    "on a street",
    "in a field",
    "next to a window",
    "under a tree",
    "on a beach",
    "in a kitchen",
    "at night",
    "in the snow",
    "near a river",
    "in a garden",
]


def caption(k: int) -> str:
    """A BLIP-like caption (about 12 words), distinct for every ``k``."""
    return (
        f"a photo of a {_ADJ[k % 10]} {_NOUN[(k // 10) % 10]} {_PLACE[(k // 100) % 10]} "
        f"with {k} spots"
    )


# ------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import open_clip

        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.amp = args.dtype == "bf16"
        torch.manual_seed(0)
        self.base = open_clip.create_model(args.model, pretrained=None).to(self.device)
        self.tokenizer = open_clip.get_tokenizer(args.model)
        size = self.base.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.batch, 3, *size, generator=g).to(self.device)
        self.y = torch.tensor([k % 2 for k in range(args.batch)])
        self.counter = 0  # fresh captions / indices
        self.objs: dict[str, Any] = {}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fresh(self) -> tuple[list[str], torch.Tensor]:
        b = self.args.batch
        start = (self.counter + 1) * b  # the warm batch holds indices 0 .. b-1
        self.counter += 1
        return [caption(start + i) for i in range(b)], torch.arange(start, start + b)

    def model(self) -> Any:
        """A fresh copy of the base model; in a memory child (one variant) the base itself,
        so that no second copy inflates the peak."""
        if self.args.memory_child:
            model, self.base = self.base, None
            assert model is not None, "a memory child builds one wrapper"
            return model
        return copy.deepcopy(self.base)

    def wrapper(self, **cfg: Any) -> DGSWrapper:
        model = self.model()
        config = DGSConfig(lora_rank=self.args.rank, lora_alpha=float(self.args.rank), **cfg)
        w = DGSWrapper(model, self.tokenizer, config).to(self.device).train()
        return w

    def adam(self, w: DGSWrapper) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(w.trainable_parameters()), lr=1e-4)

    def get(self, key: str) -> Any:
        """Build on first use: ``A``, ``A4``, ``B``, ``B4``, ``C`` -> (wrapper, optimizer[,
        teacher])."""
        if key in self.objs:
            return self.objs[key]
        if key == "A":
            w = self.wrapper(suppression=False, alignment=False)
        elif key == "A4":
            w = self.wrapper(suppression=False, alignment=False, lora_layers=LAST4)
        elif key == "B":
            w = self.wrapper()
        elif key == "B4":
            w = self.wrapper(lora_layers=LAST4)
        elif key == "C":
            teacher = copy.deepcopy(self.base).requires_grad_(False).eval()
            w = self.wrapper()
            self.objs[key] = (w, self.adam(w), teacher)
            return self.objs[key]
        else:
            raise KeyError(key)
        self.objs[key] = (w, self.adam(w))
        return self.objs[key]

    def check_same_lora(self) -> None:
        a, b, c = self.get("A")[0], self.get("B")[0], self.get("C")[0]
        same = a.lora_modules == b.lora_modules == c.lora_modules
        assert same, "A, B and C must adapt the same layers"
        a4, b4 = self.get("A4")[0], self.get("B4")[0]
        assert a4.lora_modules == b4.lora_modules
        assert b4.teacher.trunk_start > 0, "B.last4 should share the trunk"
        n = sum(p.numel() for _, p in a.named_trainable_parameters() if "lora" in _)
        m = sum(p.numel() for _, p in b.named_trainable_parameters() if "lora" in _)
        assert n == m

    # -- steps --------------------------------------------------------------------------------
    def dgs_step(self, key: str, captions: list[str] | None, index: torch.Tensor | None) -> None:
        w, opt = self.get(key)
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = w(self.x, captions, self.y, index=index)
        out.loss.backward()
        opt.step()

    def warm_batch(self) -> tuple[list[str], torch.Tensor]:
        b = self.args.batch
        return [caption(i) for i in range(b)], torch.arange(b)

    def prefill(self, key: str) -> None:
        """Stage 1 on the warm batch (fills the teacher cache) and its captions' text features."""
        w, _ = self.get(key)
        captions, index = self.warm_batch()
        with self.autocast():
            w.encode_text(captions)
            w.fit_teacher_head([(self.x, captions, self.y, index)], epochs=1)
        assert len(w.teacher_cache) >= len(index)

    def reference_step(self) -> None:
        """The released code's step (see tests/helpers/reference.py), with Adam."""
        w, opt, teacher = self.get("C")
        captions, _ = self.fresh()
        model = w.encoder.model
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            y = self.y.to(self.device).float().view(-1, 1)
            f = model.encode_image(self.x)
            with torch.no_grad():
                f_t = teacher.encode_image(self.x)
                tokens = self.tokenizer(captions).to(self.device)
                t = model.encode_text(tokens)
            t_req = t.clone().requires_grad_(True)
            loss_text = F.binary_cross_entropy_with_logits(w.text_head(t_req), y)
            (g_text,) = torch.autograd.grad(loss_text, t_req, retain_graph=True)
            ft_req = f_t.clone().requires_grad_(True)
            loss_teacher = F.binary_cross_entropy_with_logits(w.teacher_head(ft_req), y)
            (g_img,) = torch.autograd.grad(loss_teacher, ft_req)
            g_help = torch.clamp(g_img, max=0)

            def hook(g: torch.Tensor) -> torch.Tensor:
                pos = torch.relu(g_text)
                u = pos / (pos.norm(dim=1, keepdim=True) + 1e-6)
                return g - (g * u).sum(dim=1, keepdim=True) * u

            f.register_hook(hook)
            loss_img = F.binary_cross_entropy_with_logits(w.image_head(f), y)
            loss_help = (f * g_help).sum(dim=1).mean()
            total = loss_img + loss_text + 0.2 * loss_help
        total.backward()
        opt.step()

    def step_fn(self, variant: str) -> Callable[[], Any]:
        if variant == "A":
            return lambda: self.dgs_step("A", None, None)
        if variant == "A.last4":
            return lambda: self.dgs_step("A4", None, None)
        if variant == "B.cold":
            return lambda: self.dgs_step("B", *self.fresh())
        if variant == "B.warm":
            return lambda: self.dgs_step("B", *self.warm_batch())
        if variant == "B.last4":
            return lambda: self.dgs_step("B4", *self.fresh())
        if variant == "B.last4.tw":
            return lambda: self.dgs_step("B4", self.warm_batch()[0], None)
        if variant == "C":
            return self.reference_step
        w = self.get("B")[0]
        if variant == "teacher":
            return lambda: w.encode_teacher(self.x)
        if variant == "text":
            return lambda: w.encode_text(self.fresh()[0])
        if variant == "predict":
            return lambda: w.predict(self.x)
        if variant == "forward":

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return w.image_head(w.model.encode_image(self.x))

            return forward
        raise KeyError(variant)

    def timed(self, variant: str, fn: Callable[[], Any]) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one call."""
        infer = variant in ("predict", "forward")
        if infer:
            self.get("B")[0].eval()
        if self.cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with self.autocast() if variant in INFER_VARIANTS else contextlib.nullcontext():
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if infer:
            self.get("B")[0].train()
        return dt, dc


# ------------------------------------------------------------------------------------------
# FLOPs (deterministic; counted during the first warm-up round)
# ------------------------------------------------------------------------------------------
def _native_mha_flops(
    q: Any,
    k: Any,
    v: Any,
    embed_dim: int,
    num_heads: int,
    *a: Any,
    out_shape: Any = None,
    **kw: Any,
) -> int:
    """``nn.MultiheadAttention``'s inference fast path: packed q/k/v projection, attention,
    output projection (shapes ``(N, L, E)``)."""
    n, lq, e = q
    lk = k[1]
    return 2 * n * lq * e * e + 4 * n * lk * e * e + 4 * n * lq * lk * e + 2 * n * lq * e * e


class FlopCount:
    """Counts matmul, convolution and attention FLOPs (``torch.utils.flop_counter``'s formulas,
    plus the CPU flash-attention kernels) of everything run inside ``with FlopCount() as c:``,
    forward and backward. A plain dispatch mode: ``FlopCounterMode``'s module tracker does not
    support ``torch.autograd.grad`` on leaves, which the reference step uses."""

    def __init__(self) -> None:
        from torch.utils import flop_counter as fc
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        registry = dict(fc.flop_registry)
        for name, formula in {
            "_scaled_dot_product_flash_attention_for_cpu": (
                lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
            ),
            "_scaled_dot_product_flash_attention_for_cpu_backward": (
                lambda go, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(
                    go, q, k, v
                )
            ),
            "_native_multi_head_attention": _native_mha_flops,
        }.items():
            op = getattr(aten, name, None)
            if op is not None and op not in registry:
                registry[op] = fc.shape_wrapper(formula)
        self.total = 0
        owner = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = registry.get(func._overloadpacket)
                if formula is not None:
                    owner.total += int(formula(*args, **kwargs, out_val=out))
                return out

        self._mode = _Mode()

    def __enter__(self) -> FlopCount:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


# ------------------------------------------------------------------------------------------
# memory (one subprocess per variant)
# ------------------------------------------------------------------------------------------
def memory_child(args: argparse.Namespace) -> None:
    variant = args.memory_child
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bench = Bench(args)
    key = {"A": "A", "A.last4": "A4", "B.cold": "B", "B.warm": "B", "B.last4": "B4", "C": "C"}[
        variant
    ]
    bench.get(key)
    if variant == "B.warm":
        bench.prefill("B")
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = bench.step_fn(variant)
    if bench.cuda:
        torch.cuda.synchronize()
    for _ in range(args.mem_steps):
        fn()
    result = {
        "variant": variant,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_after_build_kb": built,
        "maxrss_at_start_kb": inherited,
        "vmhwm_kb": _vmhwm_kb(),
    }
    if bench.cuda:
        torch.cuda.synchronize()
        result["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    print("MEMORY " + json.dumps(result), flush=True)


def _vmhwm_kb() -> int | None:
    """Peak RSS of this process's address space (``VmHWM``), a cross-check of ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for variant in MEMORY_VARIANTS:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child", variant]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            print(f"memory run for {variant} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
            continue
        out[variant] = json.loads(lines[-1][len("MEMORY ") :])
    return out


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def report(
    args: argparse.Namespace,
    clocks: dict[str, dict[str, list[float]]],
    mem: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    flops: dict[str, int],
) -> dict[str, Any]:
    primary = args.clock
    other = next((c for c in clocks if c != primary), None)
    med = {c: {k: statistics.median(v) for k, v in t.items() if v} for c, t in clocks.items()}
    wall = clocks["wall"]
    print()
    head = f"{'variant':<11} {'wall median s':>13} {'min':>8} {'max':>8}"
    if "cpu" in clocks:
        head += f" {'CPU median s':>13} {'min':>8} {'max':>8}"
    print(head + f"  {'n':>3} {'GFLOP':>8}")
    for k in (*TRAIN_VARIANTS, *INFER_VARIANTS):
        if not wall.get(k):
            continue
        line = f"{k:<11} {med['wall'][k]:>13.4f} {min(wall[k]):>8.3f} {max(wall[k]):>8.3f}"
        if "cpu" in clocks:
            c = clocks["cpu"][k]
            line += f" {med['cpu'][k]:>13.4f} {min(c):>8.3f} {max(c):>8.3f}"
        gf = f"{flops[k] / 1e9:8.1f}" if k in flops else ""
        print(f"{line}  {len(wall[k]):>3} {gf}")

    def ratio(a: str, b: str, clock: str | None = primary) -> float | None:
        m = med.get(clock or "", {})
        return m[a] / m[b] if a in m and b in m and m[b] > 0 else None

    def fratio(a: str, b: str) -> float | None:
        return flops[a] / flops[b] if a in flops and b in flops and flops[b] > 0 else None

    checks = [
        ("B.cold / A", "all blocks, first epoch, nothing cached", "<=", 1.5),
        ("B.warm / A", "later epoch: text and teacher caches warm", "<=", 1.1),
        ("B.last4 / A.last4", "last 4 blocks, shared trunk, nothing cached", "<=", 1.2),
        ("B.last4.tw / A.last4", "last 4 blocks, shared trunk, text warm", "<=", 1.2),
        ("B.cold / C", "first epoch", "<=", 1.0),
        ("C / B.warm", "caches warm", ">=", 1.3),
        ("predict / forward", "", "<=", 1.02),
        ("C / A", "", None, None),
        ("C / B.cold", "", None, None),
        ("teacher / A", "teacher forward (adapters off, no grad)", None, None),
        ("text / A", "text tower on B new captions", None, None),
        ("teacher / A.last4", "", None, None),
        ("forward / A", "inference forward", None, None),
    ]
    print()
    print(
        f"ratios of medians, targets judged on the {primary} clock"
        + (f"; also on the {other} clock" if other else "")
        + "; FLOPs: the same ratio of counted FLOPs (deterministic)"
    )
    results = []
    for name, what, op, target in checks:
        a, b = (x.strip() for x in name.split("/"))
        value = ratio(a, b)
        if value is None:
            continue
        label = f"{name} ({what})" if what else name
        line = f"  {label:<62} {value:6.3f}"
        if op is not None:
            ok = value <= target if op == "<=" else value >= target
            results.append(
                {
                    "name": name,
                    "what": what,
                    "clock": primary,
                    "value": value,
                    "op": op,
                    "target": target,
                    "met": ok,
                    "other_clock": ratio(a, b, other),
                    "flops": fratio(a, b),
                }
            )
            line += f"  {op} {target:<4} {'met   ' if ok else 'MISSED'}"
        else:
            line += " " * 19
        alt = ratio(a, b, other)
        if alt is not None:
            line += f"  {other} {alt:6.3f}"
        fr = fratio(a, b)
        if fr is not None:
            line += f"  FLOPs {fr:6.3f}"
        print(line)

    if mem:
        print()
        if args.device == "cuda":
            print(
                f"peak memory: torch.cuda.max_memory_allocated, one process per variant "
                f"({args.mem_steps} steps)"
            )
            key, unit, div = "cuda_max_allocated", "MiB", 2**20
        else:
            print(
                f"peak memory: process peak RSS (ru_maxrss), one process per variant "
                f"({args.mem_steps} steps; 'built' = peak before the first step, 'at start' = "
                f"inherited from the launcher)"
            )
            key, unit, div = "maxrss_kb", "MiB", 1024
        base = mem.get("A", {}).get(key)
        base4 = mem.get("A.last4", {}).get(key)
        for v in MEMORY_VARIANTS:
            if v not in mem:
                continue
            val = mem[v][key]
            ref = base4 if v.endswith("last4") else base
            ref_name = "A.last4" if v.endswith("last4") else "A"
            extra = ""
            if key == "maxrss_kb":
                hwm = mem[v].get("vmhwm_kb")
                extra = (
                    f"  (built {mem[v]['maxrss_after_build_kb'] / 1024:.0f} MiB, at start "
                    f"{mem[v]['maxrss_at_start_kb'] / 1024:.0f} MiB"
                    + (f", VmHWM {hwm / 1024:.0f} MiB)" if hwm else ")")
                )
            r = f"{val / ref:5.3f} x {ref_name}" if ref else ""
            print(f"  {v:<8} {val / div:9.0f} {unit}  {r}{extra}")
        for v, target in (("B.cold", 1.1), ("B.warm", 1.1), ("B.last4", 1.1)):
            ref = base4 if v.endswith("last4") else base
            if v in mem and ref:
                r = mem[v][key] / ref
                results.append(
                    {
                        "name": f"memory {v} / {'A.last4' if v.endswith('last4') else 'A'}",
                        "value": r,
                        "op": "<=",
                        "target": target,
                        "met": r <= target,
                    }
                )
                verdict = "met" if r <= target else "MISSED"
                print(f"  memory {v} / ref {r:6.3f}   target <= {target}  {verdict}")
        if "C" in mem and base:
            print(
                f"  memory C / A {mem['C'][key] / base:6.3f}   "
                "(C holds a second, deep-copied model)"
            )
    return {
        "meta": meta,
        "times": clocks,
        "medians": med,
        "checks": results,
        "memory": mem,
        "flops": flops,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (random init)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=6, help="LoRA rank (alpha = rank)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: bf16 autocast around the forward passes (weights, Adam in fp32)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)"
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="timed rounds N (default: 5 on CPU, 20 on CUDA)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock the targets are judged on: wall time, or process CPU time (CPU "
        "only; with --threads 1 it is robust to other processes sharing the cores)",
    )
    p.add_argument("--mem-steps", type=int, default=2, help="steps per memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.memory_child:
        memory_child(args)
        return
    rounds = args.rounds or (20 if args.device == "cuda" else 5)
    if args.device == "cuda":
        args.clock = "wall"  # process CPU time says nothing about GPU work
    child_argv = [a for a in argv if a != "--no-memory"]

    t_start = time.perf_counter()
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
        "model": args.model,
        "batch": args.batch,
        "rank": args.rank,
        "dtype": args.dtype,
        "rounds": rounds,
        "warmup": args.warmup,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"dgsnet step overhead: {args.model} (random init), batch {args.batch}, LoRA rank "
        f"{args.rank} (alpha {args.rank}, dropout 0.8, q/k/v/c_fc/c_proj), {args.device} "
        f"({meta['device_name']}), {args.dtype}"
    )
    print(
        f"torch {torch.__version__}, torch.set_num_threads({threads}) -> "
        f"get_num_threads() = {torch.get_num_threads()}, MALLOC_MMAP_THRESHOLD_="
        f"{meta['malloc_mmap_threshold']}, load average at start {meta['loadavg_start']}"
    )
    print(
        f"N = {rounds} timed rounds after {args.warmup} warm-up round(s); variants interleaved, "
        f"order rotated every round"
    )

    # memory first, while this parent process is small: a child's ru_maxrss starts at the
    # parent's resident size (Linux carries it over fork/exec)
    mem = {} if args.no_memory else measure_memory(args, child_argv)

    bench = Bench(args)
    for key in ("A", "A4", "B", "B4", "C"):
        bench.get(key)
    bench.check_same_lora()
    print(
        f"LoRA: {len(bench.get('A')[0].lora_modules)} adapted linears (all blocks) / "
        f"{len(bench.get('A4')[0].lora_modules)} (last 4 blocks; B.last4 trunk starts at block "
        f"{bench.get('B4')[0].teacher.trunk_start}); same modules in A, B and C"
    )
    bench.prefill("B")  # B.warm's batch: stage 1 fills the teacher cache; captions cached
    bench.get("B4")[0].encode_text(bench.warm_batch()[0])  # B.last4.tw: captions cached
    variants = [*TRAIN_VARIANTS, *INFER_VARIANTS]
    fns = {v: bench.step_fn(v) for v in variants}
    clocks: dict[str, dict[str, list[float]]] = {"wall": {v: [] for v in variants}}
    if not bench.cuda:
        clocks["cpu"] = {v: [] for v in variants}
    flops: dict[str, int] = {}
    for r in range(args.warmup + rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            if r == 0 and args.warmup > 0:  # count FLOPs during the first (untimed) round
                with FlopCount() as counter:
                    bench.timed(v, fns[v])
                flops[v] = counter.total
                continue
            dt, dc = bench.timed(v, fns[v])
            if r >= args.warmup:
                clocks["wall"][v].append(dt)
                if "cpu" in clocks:
                    clocks["cpu"][v].append(dc)
        if r >= args.warmup:
            show = args.clock if args.clock in clocks else "wall"
            print(
                f"  round {r - args.warmup + 1}/{rounds} ({show} s): "
                + ", ".join(f"{v} {clocks[show][v][-1]:.3f}" for v in variants),
                flush=True,
            )
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.perf_counter() - t_start
    result = report(args, clocks, mem, meta, flops)
    print(
        f"\nload average at end {tuple(round(x, 2) for x in meta['loadavg_end'])}; "
        f"wall time {meta['wall_s']:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
