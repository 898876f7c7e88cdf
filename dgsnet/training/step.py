"""One stage-2 optimisation step, with the policy for a non-finite loss or gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NonFiniteError, NonFiniteInputError
from .distributed import DistInfo, any_rank
from .seeding import derive_seed

__all__ = ["StepRunner", "first_nonfinite_grad"]


def first_nonfinite_grad(named: Sequence[tuple[str, nn.Parameter]]) -> str | None:
    """The name of the first parameter whose gradient holds NaN/Inf (`None`: all finite)."""
    grads = [(n, p.grad) for n, p in named if p.grad is not None]
    if not grads:
        return None
    ok = torch.stack([torch.isfinite(g).all() for _, g in grads])
    if bool(ok.all()):
        return None
    return grads[int((~ok).nonzero()[0, 0])][0]


@dataclass
class StepRunner:
    """Runs stage-2 steps: seeds torch's RNG with `(seed, rank, step)` (LoRA dropout),
    forwards `model`, backpropagates and updates with `optimizer`, unless the loss or a
    gradient is not finite on any rank: then it raises `NonFiniteError`
    (`on_nonfinite="raise"`) or drops the update (`"skip"`) and says so in the record.

    Attributes:
        model: the wrapper, or its `DistributedDataParallel`.
        optimizer: the stage-2 optimizer.
        named: the trainable `(name, parameter)` pairs (to name a bad gradient).
        seed: the run's seed.
        dist: the distributed setting.
        device: where the batches go.
        pass_index: hand dataset indices to the wrapper (its teacher cache).
        on_nonfinite: `"raise"` or `"skip"`.
        text_table: `(features (U, D), row of each item (N,))`, or `None` to pass the
            captions themselves.
        n_batches: the batches of an epoch on this rank (for messages).
        autocast: a function returning the context the forward pass runs in
            (`dgsnet.training.precision.Precision.autocast`; default: none).
        scaler: a `torch.amp.GradScaler` (fp16) or `None`. With a scaler, a non-finite
            gradient after unscaling is a loss-scale overflow: the scaler skips the update and
            lowers the scale, and the step is recorded as skipped; only when the scale has
            fallen below 1 does `on_nonfinite="raise"` raise (the gradient itself is bad).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    named: Sequence[tuple[str, nn.Parameter]]
    seed: int
    dist: DistInfo
    device: torch.device
    pass_index: bool
    on_nonfinite: str
    text_table: tuple[Tensor, Tensor] | None
    n_batches: int
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    scaler: Any = None

    def __call__(self, batch: Any, step: int, epoch: int, batch_i: int) -> dict[str, Any]:
        """Step `step` (global), batch `batch_i` of `epoch` (0-based); returns the
        step's log record (`loss`, `losses`, `stats`; `skipped` and `reason`)."""
        opt = self.optimizer
        torch.manual_seed(derive_seed(self.seed, "step", self.dist.rank, step))
        where = f"stage 2, epoch {epoch + 1}, step {step} (batch {batch_i} of {self.n_batches})"
        opt.zero_grad(set_to_none=True)
        out, reason = self._forward(batch, where)
        record: dict[str, Any] = {
            "event": "step",
            "stage": 2,
            "epoch": epoch + 1,
            "batch": batch_i,
            "step": step,
            "skipped": False,
        }
        if reason is None:
            assert out is not None
            if self.scaler is not None:
                return self._scaled_update(out, record, where)
            out.loss.backward()
            bad = first_nonfinite_grad(self.named)
            if bad is not None:
                reason = f"non-finite gradient of {bad} at {where}"
        if reason is not None:
            opt.zero_grad(set_to_none=True)
            if self.on_nonfinite == "raise":
                raise NonFiniteError(
                    f"{reason}; lower the learning rate, check the data, or pass "
                    "on_nonfinite='skip' (--on-nonfinite skip) to skip such steps",
                    step=step,
                )
            record.update(skipped=True, reason=reason, loss=float("nan"))
            if out is not None:
                record["loss"] = float(out.loss.detach().item())
            return record
        assert out is not None
        opt.step()
        record["loss"] = float(out.loss.detach().item())
        record["losses"] = {k: float(v.item()) for k, v in out.losses.items()}
        record["stats"] = out.stats
        return record

    def _scaled_update(self, out: Any, record: dict[str, Any], where: str) -> dict[str, Any]:
        """Backward through the scaled loss, unscale, step (the scaler skips the update when a
        gradient overflowed), update the scale; fill `record` (`loss_scale` added)."""
        scaler, opt = self.scaler, self.optimizer
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        bad = first_nonfinite_grad(self.named)
        scale = float(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        record["loss"] = float(out.loss.detach().item())
        record["loss_scale"] = scale
        if bad is not None:
            opt.zero_grad(set_to_none=True)
            if scale < 1.0 and self.on_nonfinite == "raise":
                # an overflow at a loss scale below 1 is not a scaling problem: the gradient
                # itself is not finite
                raise NonFiniteError(
                    f"non-finite gradient of {bad} at {where} even at fp16 loss scale "
                    f"{scale:g}; lower the learning rate, check the data, train in bf16 or "
                    "fp32, or pass on_nonfinite='skip' (--on-nonfinite skip)",
                    step=int(record["step"]),
                )
            record.update(
                skipped=True,
                reason=f"fp16 loss-scale overflow (gradient of {bad}) at {where}; the scale "
                f"goes from {scale:g} to {float(scaler.get_scale()):g}",
                overflow=True,
            )
            return record
        record["losses"] = {k: float(v.item()) for k, v in out.losses.items()}
        record["stats"] = out.stats
        return record

    def _forward(self, batch: Any, where: str) -> tuple[Any, str | None]:
        """The model's output on `batch` and why the step cannot go on (`None`: it can),
        agreed across ranks."""
        device = self.device
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        index = batch.indices if self.pass_index else None
        text: Any = batch.captions
        if self.text_table is not None:
            table, rows = self.text_table
            text = table[rows[batch.indices]].to(device, non_blocking=True)
        reason: str | None = None
        out = None
        try:
            with self.autocast():
                out = self.model(images, text, labels, index=index)
            loss_value = out.loss.detach()
            if not bool(torch.isfinite(loss_value)):
                reason = f"non-finite loss ({loss_value.item()}) at {where}"
        except NonFiniteInputError as exc:
            reason = f"non-finite values at {where}: {exc}"
        if any_rank(reason is not None, self.dist, device) and reason is None:
            reason = f"non-finite loss on another rank at {where}"
        return out, reason
