#!/usr/bin/env python
r"""Time and memory of the paper-setting training step in each precision, side by side.

The step is the one ``dgsnet train`` runs in stage 2 (:class:`dgsnet.training.step.StepRunner`):
``DGSWrapper`` with ``DGSConfig.reference()`` (the released code's settings) on open_clip
ViT-L-14 (random init, 224 px), batch 32, Adam, captions' text features precomputed (as
``precompute_text=True`` does), no dataset indices (the paper setting's random flip keeps the
teacher cache off, so the frozen teacher runs every step). For each precision
(:mod:`dgsnet.training.precision`: fp32 = TF32 off, tf32, bf16 autocast, fp16 autocast +
GradScaler) one process builds a fresh wrapper from the same initial weights, runs
``--warmup`` untimed steps, then times ``--steps`` steps (CUDA synchronised around each) and
reports the median; peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps
(CUDA) or not measured (CPU). Ratios are to fp32.

On a CUDA machine (the paper setting)::

    python benchmarks/precision_step.py --json /tmp/precision_step.json

Smoke run on the CPU (tiny model, checks that the script works, numbers are meaningless)::

    python benchmarks/precision_step.py --tiny --device cpu --batch 4 --steps 2 --warmup 1

``--compile`` also times bf16 with ``torch.compile`` on the image tower (the first steps
compile; raise ``--warmup``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dgsnet import DGSConfig, DGSWrapper  # noqa: E402
from dgsnet.data.datasets import Batch  # noqa: E402
from dgsnet.training.distributed import DistInfo  # noqa: E402
from dgsnet.training.precision import PRECISIONS, Precision, compile_image_tower  # noqa: E402
from dgsnet.training.step import StepRunner  # noqa: E402


def base_model(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """The randomly initialised base model and its tokenizer."""
    torch.manual_seed(0)
    if args.tiny:
        from dgsnet.models import build_model

        bundle = build_model("tiny", device=device)
        return bundle.model, bundle.tokenizer
    import open_clip

    model = open_clip.create_model(args.model, pretrained=None).to(device)
    return model, open_clip.get_tokenizer(args.model)


def run_one(
    name: str, base: Any, tokenizer: Any, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Median step time and peak memory of precision ``name`` (``bf16+compile``: compiled)."""
    precision = Precision.parse(name.split("+")[0], device)
    torch.manual_seed(1)
    wrapper = DGSWrapper(copy.deepcopy(base), tokenizer, DGSConfig.reference()).to(device)
    if name.endswith("+compile"):
        compile_image_tower(wrapper.encoder)
    wrapper.train()
    size = wrapper.encoder.image_size or (224, 224)
    b = args.batch
    g = torch.Generator().manual_seed(2)
    images = torch.randn(b, 3, *size, generator=g)
    captions = [f"a photo of object number {i}" for i in range(b)]
    with torch.no_grad(), precision.activate(), precision.autocast():
        table = wrapper.encode_text(captions, use_cache=False).detach().float().cpu()
    batch = Batch(images, list(captions), torch.tensor([i % 2 for i in range(b)]),
                  torch.arange(b), ["bench"] * b)  # fmt: skip
    opt = torch.optim.Adam(list(wrapper.trainable_parameters()), lr=1e-4)
    step = StepRunner(
        model=wrapper,
        optimizer=opt,
        named=list(wrapper.named_trainable_parameters()),
        seed=0,
        dist=DistInfo(),
        device=device,
        pass_index=False,
        on_nonfinite="skip",
        text_table=(table, torch.arange(b)),
        n_batches=args.warmup + args.steps,
        autocast=precision.autocast,
        scaler=precision.make_scaler(),
    )
    cuda = device.type == "cuda"
    times: list[float] = []
    skipped = 0
    with precision.activate():
        for k in range(args.warmup + args.steps):
            if k == args.warmup and cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            record = step(batch, k + 1, 0, k + 1)
            if cuda:
                torch.cuda.synchronize(device)
            if k >= args.warmup:
                times.append(time.perf_counter() - t0)
                skipped += bool(record["skipped"])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    out = {
        "precision": name,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_gib": peak,
        "skipped_steps": skipped,
        "last_loss": record["loss"],
    }
    del step, opt, wrapper
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace, device_name: str) -> None:
    """Print the table: time and memory per precision, and their ratios to fp32."""
    ref = next((r for r in results if r["precision"] == "fp32"), results[0])
    model = "tiny" if args.tiny else args.model
    print(f"\npaper-setting step: {model}, batch {args.batch}, DGSConfig.reference(), on "
          f"{device_name}; median of {args.steps} steps after {args.warmup} warm-up")  # fmt: skip
    print(f"{'precision':<14}{'ms/step':>10}{'x fp32':>9}{'speed-up':>10}{'peak GiB':>10}"
          f"{'x fp32':>9}{'skipped':>9}")  # fmt: skip
    for r in results:
        t = r["median_s"]
        mem = r["peak_gib"]
        mem_s = f"{mem:10.2f}" if mem is not None else f"{'-':>10}"
        mem_r = (
            f"{mem / ref['peak_gib']:9.2f}" if mem is not None and ref["peak_gib"] else f"{'-':>9}"
        )
        print(f"{r['precision']:<14}{1e3 * t:10.1f}{t / ref['median_s']:9.2f}"
              f"{ref['median_s'] / t:10.2f}{mem_s}{mem_r}{r['skipped_steps']:9d}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="ViT-L-14", help="open_clip model name (random init)")
    p.add_argument("--tiny", action="store_true", help="dgsnet's tiny test model instead")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated (default: all four)"
    )
    p.add_argument("--compile", action="store_true", help="also time bf16 + torch.compile")
    p.add_argument("--json", metavar="FILE", help="write the raw results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (pass --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    names = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [n for n in names if n not in PRECISIONS]
    if bad:
        p.error(f"--precisions: unknown {bad}; choose from {', '.join(PRECISIONS)}")
    if args.compile:
        names.append("bf16+compile")
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({torch.get_num_threads()} threads)"
    base, tokenizer = base_model(args, device)
    results = []
    for name in names:
        t0 = time.perf_counter()
        results.append(run_one(name, base, tokenizer, args, device))
        print(f"{name}: {1e3 * results[-1]['median_s']:.1f} ms/step "
              f"({time.perf_counter() - t0:.0f} s with set-up)", flush=True)  # fmt: skip
    report(results, args, device_name)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device_name,
                    "model": "tiny" if args.tiny else args.model,
                    "batch": args.batch,
                    "torch": torch.__version__,
                    "results": results,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
