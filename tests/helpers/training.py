"""Training runs of the tiny model for the tests of `dgsnet.training`, and the comparison of
their weights (in memory or as saved by a run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.training import build_model, open_datasets, seed_everything, train

RUN_OPTIONS: dict[str, Any] = dict(
    epochs=2,
    stage1_epochs=2,
    batch_size=3,
    lr=1e-3,
    stage1_lr=1e-2,
    progress=False,
    deterministic=True,
    save_every=2,
)
"""The options of `train_tiny`'s runs unless a call gives others: two epochs a stage in
batches of 3 (6 steps an epoch on `make_bench(n=4)`), a checkpoint every 2 steps."""


class Boom(RuntimeError):
    """The simulated crash a test's training callback raises."""


def train_tiny(
    root: Path,
    out: Path,
    *,
    callbacks: Sequence[Any] = (),
    flip: bool = True,
    device: str = "cpu",
    **options: Any,
) -> Any:
    """`train` of the tiny model (reference preset, LoRA dropout 0.5) on the image tree `root`
    into `out` with `RUN_OPTIONS` updated by `options`, seeded so that two calls with the same
    options give the same weights."""
    seed_everything(0)  # LoRA A and the heads are initialised from the global RNG
    bundle = build_model("tiny", flip=flip, device=device)
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig.reference(lora_dropout=0.5))
    data = open_datasets([root], bundle.train_transform, captions="auto")
    return train(
        wrapper,
        data,
        out,
        callbacks=callbacks,
        model_info=bundle.info(),
        deterministic_transform=bundle.deterministic_train,
        **{**RUN_OPTIONS, **options},
    )


def weights(wrapper: DGSWrapper) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters and of the teacher head, by name."""
    out = {n: p.detach().cpu().clone() for n, p in wrapper.named_trainable_parameters()}
    out.update(
        {
            f"teacher.{n}": p.detach().cpu().clone()
            for n, p in wrapper.teacher_head.named_parameters()
        }
    )
    return out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same names and bit-identical tensors."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_saved_weights(a: Path, b: Path) -> None:
    """The `dgs_weights.safetensors` of the checkpoint folders `a` and `b` are bit-identical."""
    from safetensors.torch import load_file

    assert_same_weights(
        load_file(a / "dgs_weights.safetensors"), load_file(b / "dgs_weights.safetensors")
    )
