"""The two-stage training loop: `Trainer` (`dgsnet.training.train` is its one-call form).

A `Trainer` holds one run: its inputs, and what the run finds and advances, all set in
`Trainer.__init__`: the process group, the data fingerprint, the log, the run's
`RunProgress` (epoch, step, skipped steps, ...), and the optimizer of stage 2. `Trainer.run`
is the run as a list of steps: prepare the output folder, restore a checkpoint, stage 1 (the
teacher head), stage 2 (LoRA and heads, epoch by epoch and step by step, with checkpoints),
finish (`final/` and the summary). What a checkpoint holds is assembled from values by
`dgsnet.training.run_state`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import collate
from ..errors import CheckpointError, TrainingConfigError, TrainingInterrupted
from ..io import atomic_write_json, json_safe, load_tensors, sha256_file
from ..progress import progress_bar
from ..wrapper import WEIGHTS_NAME, DGSWrapper
from .data import (
    ResumableSampler,
    Stage1Batches,
    TrainItems,
    caption_table,
    dataset_fingerprint,
    iterate_loader,
    make_loader,
)
from .distributed import DistInfo, any_rank, barrier, broadcast_parameters, setup_distributed
from .fresh_start import fresh_start_refusal
from .guard import check_finite_weights
from .lock import hold_run_lock
from .monitor import ValidationMonitor
from .options import TrainOptions
from .precision import Precision, compile_image_tower, scaler_state
from .results import TrainResult, TrainState
from .run_folder import (
    FINAL_DIR,
    LAST_DIR,
    LOG_NAME,
    OPTIMIZER_NAME,
    STATE_NAME,
    SUMMARY_NAME,
    clear_run_state,
    commit_dir,
    find_resume_checkpoint,
    resolve_checkpoint,
    save_model_dir,
    staging_dir,
    write_run_json,
)
from .run_state import (
    RunProgress,
    checkpoint_state,
    load_training_state,
    restore_optimizer,
    resume_key,
    run_summary,
    save_optimizer,
    save_teacher_cache,
    write_state_json,
)
from .runlog import RunLog
from .seeding import derive_seed, deterministic_algorithms, seed_everything, set_rng_state
from .signals import StopFlag
from .step import StepRunner
from .tensorboard import TENSORBOARD_DIR, TensorBoardSink

__all__ = ["TrainResult", "TrainState", "Trainer"]


class Trainer:
    """One two-stage DGS-Net training run of `wrapper` on `data` (see `train`).

    Args:
        wrapper: the `DGSWrapper` to train in place, on its device.
        data: a dataset of `dgsnet.data.Sample` items, or a list of them.
        options: the run's validated options.
        callbacks: `callback(event, TrainState)` functions.

    Raises:
        TrainingConfigError: `wrapper` is not a DGSWrapper, or stage 2 alone has no
            teacher head to start from.

    Examples:
        >>> Trainer(wrapper, data, TrainOptions("runs/x", epochs=2)).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        wrapper: DGSWrapper,
        data: Dataset | Sequence[Dataset],
        options: TrainOptions,
        *,
        callbacks: Sequence[Callable[[str, TrainState], None]] = (),
        val_data: Dataset | Sequence[Dataset] | None = None,
    ) -> None:
        if not isinstance(wrapper, DGSWrapper):
            raise TrainingConfigError(f"train needs a DGSWrapper, got {type(wrapper).__name__}")
        if not isinstance(options, TrainOptions):
            raise TrainingConfigError(
                f"options must be a TrainOptions, got {type(options).__name__}"
            )
        self.wrapper, self.data, self.options = wrapper, data, options
        self.callbacks = list(callbacks)
        """The `callback(event, TrainState)` functions."""
        self.out = Path(options.out_dir)
        """The output folder."""
        self.cfg = wrapper.config
        """The wrapper's `DGSConfig`."""
        self.device = wrapper.device
        """The wrapper's device."""
        self.precision = Precision.parse(options.precision, self.device)
        """The run's precision policy (`TrainOptions.precision` on the device)."""
        self._check_stage2_has_teacher()
        self.stop = StopFlag(options.handle_signals)
        """SIGINT/SIGTERM handling (`TrainOptions.handle_signals`)."""
        self.validation = ValidationMonitor(options, val_data, self.cfg.num_classes)
        """Validation during training (`dgsnet.training.monitor`): off without validation data."""
        # what the run finds (run() fills them in before anything is trained)
        self.dist = DistInfo()
        """The process group, joined by `run`."""
        self.fingerprint: dict[str, Any] = {}
        """The training data's fingerprint, which a resumed run must match."""
        self.resume_key: dict[str, Any] = {}
        """The settings a resumed run must share."""
        self.log = RunLog(None)
        """The run log, `train_log.jsonl` (opened by `run` on rank 0)."""
        # where the run stands: restored from a checkpoint, advanced step by step
        self.progress = RunProgress(stage1_done=options.stage == "2")
        """Where the run stands: restored from a checkpoint, advanced step by step."""
        self.resumed_from: int | None = None
        """The step of the checkpoint resumed, if any."""
        self.ts = TrainState(wrapper=wrapper, out_dir=self.out)
        """The `TrainState` handed to the callbacks."""
        # stage 2: no optimizer before it (nor in a stage-1 run), no scaler without fp16
        self.optimizer: torch.optim.Optimizer | None = None
        """Stage 2's Adam optimizer (none before it, nor in a stage-1 run)."""
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        """Stage 2's learning-rate schedule."""
        self.scaler: torch.amp.GradScaler | None = None
        """The fp16 `GradScaler` of stage 2, else `None`."""
        self.names: list[str] = []
        """The optimizer's parameters, by name."""
        self.n_batches = 0
        """Stage-2 batches per epoch on this rank."""
        self.t_start = time.perf_counter()
        """`time.perf_counter()` at the start of `run`."""
        self.elapsed = 0.0
        """Wall-clock seconds of the run, once finished."""

    @property
    def main(self) -> bool:
        """Whether this process writes the log and checkpoints (rank 0)."""
        return self.dist.is_main

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train, checkpointing as configured; return the `TrainResult`.

        Raises:
            TrainingConfigError: the data is empty, or a resumed run's settings or data
                differ from its checkpoint's.
            CheckpointError: the checkpoint to resume is damaged.
            NonFiniteError: a non-finite loss or gradient with `on_nonfinite="raise"`.
            TrainingInterrupted: SIGINT/SIGTERM with `handle_signals` (after a checkpoint).
            RunLockedError: another live run holds `out_dir`'s lock (`.lock`).
        """
        o = self.options
        self.t_start = time.perf_counter()
        items = self._setup()
        with hold_run_lock(self.out, self.dist, self.device):  # one run per out_dir
            ckpt = self._prepare_out_dir()
            state = self._restore(ckpt)
            try:
                with (
                    deterministic_algorithms(o.deterministic, self.device),
                    self.precision.activate(),
                    self.stop,
                ):
                    self._emit("train_begin")
                    if o.runs_stage1 and not self.progress.stage1_done:
                        self._stage1(items)
                    if o.runs_stage2:
                        self._stage2(items, ckpt, state)
                    self._finish()
            finally:
                self.log.close()
        return self._result()

    def _setup(self) -> TrainItems:
        """Join the process group, index the data, fingerprint it, fix the resume key."""
        o = self.options
        self.dist = setup_distributed(self.device)
        self.ts.rank = self.dist.rank
        items = TrainItems(self.validation.split(self.data), seed=o.seed)
        self.fingerprint = dataset_fingerprint(items.datasets)
        self.resume_key = resume_key(o, self.cfg.to_dict(), self.dist.world_size)
        return items

    def _prepare_out_dir(self) -> Path | None:
        """Find the checkpoint to resume (returned); on a fresh run delete an earlier run's
        state."""
        resume = self.options.resume
        ckpt = find_resume_checkpoint(self.out) if resume is not False else None
        if resume is True and ckpt is None:
            raise TrainingConfigError(f"nothing to resume: {self.out / LAST_DIR} does not exist")
        refusal = None
        if self.main and ckpt is None:  # a fresh start: keep what it must not delete
            refusal = fresh_start_refusal(self.out, resume=resume, init_from=self.options.init_from)
        if any_rank(refusal is not None, self.dist, self.device):
            raise refusal or TrainingConfigError(f"rank 0 refused to start over in {self.out}")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                clear_run_state(self.out)
        barrier(self.dist)
        return ckpt

    def _restore(self, ckpt: Path | None) -> dict[str, Any] | None:
        """Load the checkpoint `ckpt` (or `init_from`), open the log, write `run.json`, set
        the RNGs and the progress; return the checkpoint's training state (`None` when the
        run starts fresh)."""
        o = self.options
        state: dict[str, Any] | None = None
        if ckpt is not None:
            state = load_training_state(
                ckpt, self.wrapper, self.resume_key, self.fingerprint, o.epochs
            )
        elif o.init_from is not None:
            self._init_from(o.init_from)
        offset = int(state.get("log_offset", 0)) if state is not None else None
        tensorboard = o.tensorboard and self.main
        sinks = [TensorBoardSink(self.out / TENSORBOARD_DIR)] if tensorboard else []
        self.log = RunLog(self.out / LOG_NAME if self.main else None, offset, sinks)
        self.validation.restore(ckpt, self.log, self.main, self.precision)
        if self.main:
            write_run_json(self.out, o.model_info, o.run_info, self.resume_key, self.fingerprint)
        try:
            if state is None:
                seed_everything(o.seed)
            else:
                set_rng_state(state["rng"])
        except BaseException:
            self.log.close()
            raise
        if state is not None:
            self.progress = RunProgress.from_state(state)
            self.resumed_from = self.progress.step
        p = self.progress
        self.log.write(
            {
                "event": "resume" if state else "start",
                "time": time.time(),
                "step": p.step,
                "epoch": p.epoch,
                "batch": p.batch,
                "world_size": self.dist.world_size,
                "checkpoint": os.fspath(ckpt) if ckpt else None,
                "num_images": self.fingerprint["num_images"],
            }
        )
        return state

    def _init_from(self, init_from: str | os.PathLike[str]) -> None:
        try:
            self.wrapper.load_checkpoint(resolve_checkpoint(init_from))
        except CheckpointError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            raise CheckpointError(f"cannot initialise from {init_from}: {exc}") from exc

    def _emit(self, event: str) -> None:
        """Show the callbacks the run's progress (`TrainState`) at `event`."""
        ts, p = self.ts, self.progress
        ts.global_step, ts.skipped_steps, ts.stage1_history = p.step, p.skipped, p.stage1_history
        for cb in self.callbacks:
            cb(event, ts)

    # -- stage 1 -------------------------------------------------------------------------------

    def _stage1(self, items: TrainItems) -> None:
        """Fit the teacher head as a linear probe on frozen features; checkpoint."""
        o, wrapper = self.options, self.wrapper
        self.progress.stage = self.ts.stage = 1
        batches = Stage1Batches(
            items,
            o.batch_size,
            o.seed,
            o.shuffle,
            self.device,
            bool(o.deterministic_transform),
            o.num_workers,
            lambda: self.stop.requested,
        )
        with self.precision.autocast():  # the frozen encoder's forward passes
            history = wrapper.fit_teacher_head(
                batches,
                epochs=o.stage1_epochs,
                lr=o.stage1_lr,
                betas=o.betas,
                progress=o.progress and self.main,
                cache_features=bool(o.deterministic_transform),
            )
        if self.dist.distributed:
            broadcast_parameters(wrapper.teacher_head, self.dist)
            # each rank filled its teacher cache with its own head: refill from the broadcast
            # one during stage 2 instead
            wrapper.teacher_cache.clear()
        self.progress.stage1_history = [float(h) for h in history]
        for i, h in enumerate(history):
            self.log.write({"event": "stage1_epoch", "epoch": i + 1, "loss": h})
        self.progress.stage1_done = True
        self._checkpoint("stage2" if o.stage == "both" else "done")
        self._emit("stage1_end")

    # -- stage 2 -------------------------------------------------------------------------------

    def _stage2(self, items: TrainItems, ckpt: Path | None, state: dict[str, Any] | None) -> None:
        """LoRA + heads with the gradient surgery, epoch after epoch (the optimizer's and
        the scaler's state from the checkpoint `ckpt` with training state `state`, if any)."""
        o = self.options
        self.progress.stage = self.ts.stage = 2
        named, optimizer, scheduler = self._make_optimizer(ckpt, state)
        self.scaler = self.precision.make_scaler((state or {}).get("grad_scaler"))
        if o.compile:
            compile_image_tower(self.wrapper.encoder)
        model = self.ts.model = self._parallel_model()
        sampler = ResumableSampler(
            len(items),
            seed=o.seed,
            shuffle=o.shuffle,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.n_batches = math.ceil(sampler.per_rank / o.batch_size)
        step = StepRunner(
            model=model,
            optimizer=optimizer,
            named=named,
            seed=o.seed,
            dist=self.dist,
            device=self.device,
            pass_index=bool(o.deterministic_transform),
            on_nonfinite=o.on_nonfinite,
            text_table=self._caption_table(items)
            if o.precompute_text and not self.cfg.plain
            else None,
            n_batches=self.n_batches,
            autocast=self.precision.autocast,
            scaler=self.scaler,
        )
        self.wrapper.train()
        for epoch in range(self.progress.epoch, o.epochs):
            if self.validation.stopped:  # early stop (a resumed run stays stopped)
                break
            self._epoch(epoch, items, sampler, step, optimizer)
            if self.validation.stopped and self.progress.batch < self.n_batches:  # mid-epoch
                self._checkpoint("stage2")
                break
            self._end_epoch(epoch, scheduler)
        self.wrapper.eval()

    def _caption_table(self, items: TrainItems) -> Any:
        """The precomputed text features, computed under the run's autocast (as the step
        would compute them) and kept in float32."""
        with self.precision.autocast():
            table = caption_table(self.wrapper, items)
        return None if table is None else (table[0].float(), table[1])

    def _make_optimizer(
        self, ckpt: Path | None, state: dict[str, Any] | None
    ) -> tuple[list[tuple[str, nn.Parameter]], torch.optim.Optimizer, Any]:
        """Adam and the step schedule (their state from the checkpoint on a resumed run);
        returns `(named parameters, optimizer, scheduler)` and keeps them for checkpoints."""
        o = self.options
        # after any checkpoint was loaded, as the optimizer binds these parameter objects
        named = list(self.wrapper.named_trainable_parameters())
        self.names = [n for n, _ in named]
        opt = torch.optim.Adam([p for _, p in named], lr=o.lr, betas=o.betas)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.lr_step, gamma=o.lr_gamma)
        self.optimizer, self.scheduler = opt, sched
        self.ts.optimizer, self.ts.scheduler = opt, sched
        if state is not None and ckpt is not None and state.get("optimizer"):
            tensors = load_tensors(ckpt / OPTIMIZER_NAME, state["optimizer"].get("sha256"))
            restore_optimizer(opt, self.names, tensors, state["optimizer"], ckpt)
        if state is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        return named, opt, sched

    def _parallel_model(self) -> nn.Module:
        """The wrapper, under `DistributedDataParallel` when there are several ranks."""
        if not self.dist.distributed:
            return self.wrapper
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev_ids = None
        if self.device.type == "cuda":
            index = self.device.index
            dev_ids = [index if index is not None else torch.cuda.current_device()]
        return DDP(self.wrapper, device_ids=dev_ids, find_unused_parameters=self.cfg.plain)

    def _epoch(
        self,
        epoch: int,
        items: TrainItems,
        sampler: ResumableSampler,
        step: StepRunner,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """The stage-2 steps of `epoch`, from the batch the progress stands at on."""
        o = self.options
        start = self.progress.batch
        self.progress.epoch = self.ts.epoch = epoch
        items.set_epoch(("stage2", epoch))
        sampler.set_epoch(epoch)
        sampler.set_start(start * o.batch_size)
        loader = make_loader(
            items,
            sampler,
            o.batch_size,
            o.num_workers,
            derive_seed(o.seed, "loader2", epoch),
            self.device,
            collate,
        )
        bar = progress_bar(
            total=self.n_batches,
            initial=start,
            desc=f"stage 2 epoch {epoch + 1}/{o.epochs}",
            enabled=o.progress and self.main,
        )
        batch_i = start
        try:
            for batch in iterate_loader(loader):
                batch_i += 1
                record = step(batch, self.progress.step + 1, epoch, batch_i)
                record["lr"] = optimizer.param_groups[0]["lr"]
                self._after_step(record, epoch, batch_i, bar)
                if self.validation.stopped:
                    break
        finally:
            bar.close()

    def _after_step(self, record: dict[str, Any], epoch: int, batch_i: int, bar: Any) -> None:
        """Count, log and show the step; checkpoint when due or when asked to stop."""
        o, p = self.options, self.progress
        step = p.step = record["step"]
        p.batch = self.ts.batch = batch_i
        if record["skipped"]:
            p.skipped += 1
        self.ts.record = record
        if record["skipped"] or step % o.log_every == 0:
            self.log.write(record)
        bar.update(1)
        post = {"loss": f"{record['loss']:.4f}"}
        if "removed_fraction" in record.get("stats", {}):
            post["removed"] = f"{record['stats']['removed_fraction']:.3f}"
        if p.skipped:
            post["skipped"] = str(p.skipped)
        bar.set_postfix(post)
        if self.validation.due(step):
            self.validation.run(self.wrapper, step, epoch + 1)
        if o.save_every and step % o.save_every == 0 and batch_i < self.n_batches:
            self._checkpoint("stage2")
        self._emit("step_end")
        if any_rank(self.stop.requested, self.dist, self.device):
            self._checkpoint("stage2")
            raise TrainingInterrupted(
                f"stopped at stage-2 step {step} (epoch {epoch + 1}, batch "
                f"{batch_i}/{self.n_batches}); the checkpoint {self.out / LAST_DIR} resumes it"
            )

    def _end_epoch(self, epoch: int, scheduler: Any) -> None:
        """Step the schedule, log the epoch, checkpoint."""
        scheduler.step()
        p = self.progress
        p.epoch, p.batch = epoch + 1, 0
        self.log.write(
            {"event": "epoch_end", "epoch": epoch + 1, "step": p.step, "skipped_steps": p.skipped}
        )
        if self.validation.per_epoch:
            self.validation.run(self.wrapper, p.step, epoch + 1)
        self._checkpoint("done" if p.epoch == self.options.epochs else "stage2")
        self._emit("epoch_end")

    # -- checkpoints and the end ---------------------------------------------------------------

    def _checkpoint(self, phase: str) -> None:
        """Write `OUT/last` at the run's progress (rank 0, between barriers) and tell the
        callbacks."""
        barrier(self.dist)
        if self.main:
            self._write_last(phase)
        barrier(self.dist)
        self._emit("checkpoint")

    def _write_last(self, phase: str) -> None:
        o, p = self.options, self.progress
        target = self.out / LAST_DIR
        check_finite_weights(self.wrapper, os.fspath(target), p.step)
        tmp = staging_dir(target)
        save_model_dir(tmp, self.wrapper, o.model_info)
        opt_meta = None
        if self.optimizer is not None:
            opt_meta = save_optimizer(tmp, self.optimizer, self.names)
        cache_meta = save_teacher_cache(tmp, self.wrapper) if o.deterministic_transform else None
        progress = p.to_state(
            seed=o.seed, batch_size=o.batch_size, shuffle=o.shuffle, world_size=self.dist.world_size
        )
        body = checkpoint_state(
            progress,
            phase=phase,
            resume_key=self.resume_key,
            dataset=self.fingerprint,
            precision=o.precision,
            weights_sha256=sha256_file(tmp / WEIGHTS_NAME),
            optimizer=opt_meta,
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            grad_scaler=scaler_state(self.scaler),
            teacher_cache=cache_meta,
            log_offset=self.log.offset(),
        )
        write_state_json(tmp / STATE_NAME, body)
        self.validation.save(tmp)
        commit_dir(tmp, target)
        self.log.write(
            {
                "event": "checkpoint",
                "step": p.step,
                "epochs_done": p.epoch,
                "batches_done_in_epoch": p.batch,
                "phase": phase,
            }
        )

    def _finish(self) -> None:
        """Write `OUT/final` and the summary."""
        final_dir: Path | None = None
        barrier(self.dist)
        if self.main:
            final_dir = self.out / FINAL_DIR
            check_finite_weights(self.wrapper, os.fspath(final_dir), self.progress.step)
            tmp = staging_dir(final_dir)
            save_model_dir(tmp, self.wrapper, self.options.model_info)
            commit_dir(tmp, final_dir)
        barrier(self.dist)
        self.elapsed = time.perf_counter() - self.t_start
        summary = run_summary(
            self.progress,
            stage=self.options.stage,
            epochs=self.options.epochs,
            resumed_from=self.resumed_from,
            final_dir=final_dir,
            elapsed_s=self.elapsed,
            num_images=self.fingerprint["num_images"],
        )
        self.log.write(summary)
        if self.main:
            atomic_write_json(self.out / SUMMARY_NAME, json_safe(summary))
        self._emit("train_end")

    def _result(self) -> TrainResult:
        return TrainResult(
            wrapper=self.wrapper,
            out_dir=self.out,
            final_dir=self.out / FINAL_DIR if self.main else None,
            global_step=self.progress.step,
            skipped_steps=self.progress.skipped,
            epochs=self.options.epochs,
            stage1_history=self.progress.stage1_history,
            resumed_from=self.resumed_from,
            elapsed_s=self.elapsed,
        )

    def _check_stage2_has_teacher(self) -> None:
        o = self.options
        if o.stage == "2" and self.cfg.alignment and o.init_from is None:
            if o.resume is False or find_resume_checkpoint(self.out) is None:
                raise TrainingConfigError(
                    "stage 2 alone needs a trained teacher head for Prior Alignment: pass "
                    "init_from (e.g. a stage-1 run's final/ folder), run stage 'both', or "
                    "switch alignment off"
                )
