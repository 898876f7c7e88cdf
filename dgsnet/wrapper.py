r"""`DGSWrapper`: DGS-Net fine-tuning of a CLIP-like dual encoder inside your own loop.

The step follows the DGS-Net paper (Distillation-Guided Gradient Surgery, arXiv 2511.13108)
and the training step of the authors' released code (HorizonTEL/DGS-Net,
`networks/trainer.py`); `docs/wrapper.md` walks through it. Per batch of `B` images with
captions and labels the wrapper computes:

* student features `f = E_img(x)` (LoRA on), teacher features `f_T` (adapters off, no
  grad), text features `t` (frozen text tower, cached per caption);
* `L_img = loss(h(f'), y)` with
  `f' = GradientSurgery(f, OrthogonalSuppression, harm=g_text)`,
  `L_text = loss(h_t(t), y)`, `L_T = loss(h_T(f_T), y)` (value only),
  `g_text = dL_text/dt` and `g_img = dL_T/df_T` (closed form for linear heads);
* the alignment term `L_align = mean_b <f'_b, min(g_img_b, 0)>`, attached to `f'` so that
  the projection also sees it (the reference order), or to `f` (project first, then align:
  the paper's order). With `align_scale="reference"` the references are the gradients of the
  mean-reduced losses (each carries `1/B`, so the alignment is weighted `lambda/B`, as in
  the released code); with `"invariant"` they are per-sample gradients (no `1/B`), which makes
  the step independent of the batch size, `eps` included;
* `loss = L_img + L_text + align_weight * L_align` (`+ feature_distill * MSE(f, f_T)`
  when feature distillation is on; taken on the raw features `f`, so the projection does
  not act on its gradient).

Realising the alignment as a loss term rather than inside the backward hook gives the same
gradient as `PriorAlignment` and keeps it correct under loss scaling and data parallelism.

The pieces around the step live in their own modules: input checks in
`dgsnet.validation`, the text and teacher caches in `dgsnet.caches`, checkpoint files
in `dgsnet.checkpoint`, the teacher's outputs and the two references in
`dgsnet.references`, stage 1 in `dgsnet.stage1`, `DGSOutput` in `dgsnet.output`.

Examples:
    >>> import open_clip  # doctest: +SKIP
    >>> model, _, _ = open_clip.create_model_and_transforms(  # doctest: +SKIP
    ...     "ViT-L-14", pretrained="openai")
    >>> tokenizer = open_clip.get_tokenizer("ViT-L-14")  # doctest: +SKIP
    >>> dgs = DGSWrapper(model, tokenizer, DGSConfig.reference())  # doctest: +SKIP
    >>> out = dgs(images, captions, labels)  # doctest: +SKIP
    >>> out.loss.backward()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .caches import TeacherCache, TextCache
from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    config_from_meta,
    load_dgs_checkpoint,
    read_checkpoint_meta,
    save_dgs_checkpoint,
)
from .config import DGSConfig
from .encoders import DualEncoder, wrap_encoder
from .heads import LossFn, classification_loss
from .lora import LoRASpec, adapters_disabled, attach_lora, check_no_merge
from .output import DGSOutput
from .references import help_reference, student_and_teacher, text_reference
from .stage1 import fit_teacher_head
from .surgery import GradientSurgery, OrthogonalSuppression, SurgeryRule, SurgeryStats, fuse
from .validation import (
    check_captions,
    check_images,
    check_index,
    check_labels,
    check_text_features,
    check_tokens,
    inputs_finite,
    raise_nonfinite_inputs,
    vocab_size,
)

__all__ = ["DGSWrapper", "DGSOutput", "WEIGHTS_NAME", "CONFIG_NAME"]


class DGSWrapper(nn.Module):
    """DGS-Net around a CLIP-like dual encoder (see the module docstring).

    Args:
        model: open_clip / OpenAI CLIP model, Hugging Face `CLIPModel`/`SiglipModel`, or a
            `DualEncoder`. It is modified in place: frozen, LoRA
            injected into its image tower (and, for open_clip, its attention split into
            q/k/v projections; the function is unchanged).
        tokenizer: turns caption strings into tokens (`open_clip.get_tokenizer(name)`, a
            Hugging Face tokenizer); optional when captions come as tokens or features.
        config: a `DGSConfig`.
        loss_fn: optional `loss_fn(logits, labels) -> scalar` replacing BCE/CE for all three
            heads (reference gradients then come from autograd on the heads).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        config: DGSConfig | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__()
        config = DGSConfig() if config is None else config
        if not isinstance(config, DGSConfig):
            raise TypeError(f"config must be a DGSConfig, got {type(config).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.config = config
        self.encoder: DualEncoder = wrap_encoder(model, tokenizer)
        self.model = self.encoder.model  # registers every weight as a submodule
        self.loss_fn = loss_fn
        self.teacher_model: nn.Module | None = None
        self._teacher_encoder: DualEncoder | None = None
        if config.teacher == "copy":
            teacher = copy.deepcopy(self.encoder.model).requires_grad_(False)
            self.teacher_model = teacher
            self._teacher_encoder = type(self.encoder)(teacher, tokenizer)
        spec = LoRASpec(
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=tuple(config.lora_targets) if config.lora_targets else None,
            layers=tuple(config.lora_layers) if config.lora_layers else None,
            scaling=config.lora_scaling,
        )
        self.lora_modules: list[str] = attach_lora(self.encoder, spec)
        dim = self.encoder.feature_dim()
        self.feature_dim = dim
        p = next(self.model.parameters())
        kw: dict[str, Any] = {
            "device": p.device,
            "dtype": p.dtype if p.is_floating_point() else None,
        }
        self.image_head = nn.Linear(dim, config.num_classes, **kw)
        self.text_head = nn.Linear(dim, config.num_classes, **kw)
        self.teacher_head = nn.Linear(dim, config.num_classes, **kw)
        self.teacher_head.requires_grad_(False)
        self.rule: SurgeryRule | None = None
        if config.suppression:
            rule: SurgeryRule = OrthogonalSuppression(
                eps=config.eps, conflict_only=config.conflict_only
            )
            self.rule = fuse(rule) if config.fused else rule
        self.text_cache = TextCache(config.text_cache_size)
        """Text features by caption (LRU); its capacity follows `config.text_cache_size`."""
        self.teacher_cache = TeacherCache()
        """Teacher logits by dataset index (filled when `index` is passed to the step)."""
        self._trunk_start = self._find_trunk_start()
        # one base weight of the image tower, found once: its dtype is what images must match
        # (nn.Module.to converts parameters in place, so the reference stays current)
        self._dtype_probe: Tensor | None = next(
            (
                p
                for n, p in self.encoder.image_tower.named_parameters()
                if p.is_floating_point() and "lora_" not in n
            ),
            None,
        )

    # -- plumbing -----------------------------------------------------------------------------
    def _find_trunk_start(self) -> int:
        """First adapted block when every adapted module sits at or after it (0: no sharing)."""
        pattern = self.encoder.block_pattern
        starts = []
        for name in self.lora_modules:
            parts = name.split(".")
            if pattern not in parts or parts.index(pattern) + 1 >= len(parts):
                return 0
            starts.append(int(parts[parts.index(pattern) + 1]))
        return min(starts) if starts else 0

    @property
    def _loss_kind(self) -> str | None:
        return None if self.loss_fn is not None else self.config.loss_kind

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(logits, labels)
        return classification_loss(logits, labels, self.config.loss_kind)

    @property
    def device(self) -> torch.device:
        return self.image_head.weight.device

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """LoRA parameters of the image tower, the image head and the text head."""
        for _, p in self.named_trainable_parameters():
            yield p

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for n, p in self.encoder.image_tower.named_parameters():
            if "lora_" in n:
                yield f"lora.{n}", p
        for prefix, head in (("image_head", self.image_head), ("text_head", self.text_head)):
            for n, p in head.named_parameters():
                yield f"{prefix}.{n}", p

    # -- validation (dgsnet.validation) ------------------------------------------------------
    def _check_images(self, images: Any) -> int:
        return check_images(
            images,
            image_size=self.encoder.image_size,
            device=self.device,
            dtype=self._image_dtype(),
        )

    def _image_dtype(self) -> torch.dtype | None:
        return self._dtype_probe.dtype if self._dtype_probe is not None else None

    _inputs_finite = staticmethod(inputs_finite)
    _raise_nonfinite_inputs = staticmethod(raise_nonfinite_inputs)

    def _check_labels(self, labels: Any, batch: int) -> Tensor:
        return check_labels(
            labels,
            batch,
            device=self.device,
            num_classes=self.config.num_classes,
            custom_loss=self.loss_fn is not None,
        )

    def _check_index(self, index: Any, batch: int) -> Tensor | None:
        return check_index(index, batch)

    # -- encoders -----------------------------------------------------------------------------
    def _post(self, feats: Tensor) -> Tensor:
        return F.normalize(feats, dim=-1) if self.config.normalize_features else feats

    def encode_student(self, images: Tensor) -> Tensor:
        """Student image features (LoRA on), with grad.

        Args:
            images: `(B, 3, H, W)` pixels.

        Returns:
            `(B, D)` features.
        """
        return self._post(self.encoder.encode_image(images))

    @torch.no_grad()
    def encode_teacher(self, images: Tensor) -> Tensor:
        """Teacher image features: the pre-fine-tuning encoder (adapters off), no grad.

        Args:
            images: `(B, 3, H, W)` pixels.

        Returns:
            `(B, D)` features, detached.
        """
        if self._teacher_encoder is not None:
            return self._post(self._teacher_encoder.encode_image_pooled(images))
        check_no_merge(self.encoder.image_tower)
        with adapters_disabled(self.encoder.image_tower):
            return self._post(self.encoder.encode_image_pooled(images))

    @torch.no_grad()
    def encode_text(
        self, text: Any, batch_size: int | None = None, *, use_cache: bool = True
    ) -> Tensor:
        """Text features of the frozen text tower, no grad.

        Args:
            text: a list of caption strings, token ids (`LongTensor (B, L)` or a Hugging
                Face token mapping), or precomputed features (a floating tensor `(B, D)`).
            batch_size: when given, the number of rows `text` must yield.
            use_cache: look captions up in (and add them to) `text_cache`, an LRU bounded
                by `config.text_cache_size`. `False` encodes every caption and keeps no
                copy (for a caller that holds its own table of caption features).

        Returns:
            A tensor `(B, D)` on the wrapper's device.

        Raises:
            TypeError: `text` is none of the accepted kinds.
            ValueError: wrong shape, empty list, or `batch_size` rows not matched.
        """
        if isinstance(text, str):
            raise TypeError("text must be a list of captions, got a single string")
        if isinstance(text, Tensor) and text.is_floating_point():
            check_text_features(text, self.feature_dim)
            feats = text.to(self.device, self.text_head.weight.dtype)
        elif isinstance(text, (Tensor, Mapping)):
            if isinstance(text, Tensor):
                text = check_tokens(text, device=self.device, vocab=vocab_size(self.encoder.model))
            feats = self._post(self.encoder.encode_text(text))
        elif isinstance(text, Sequence):
            feats = self._encode_captions(check_captions(text), use_cache)
        else:
            raise TypeError(
                "text must be a list of strings, token ids, or a feature tensor, got "
                f"{type(text).__name__}"
            )
        if batch_size is not None and feats.shape[0] != batch_size:
            raise ValueError(f"got {feats.shape[0]} captions/text rows for {batch_size} images")
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"text features have dimension {feats.shape[-1]} but image features "
                f"{self.feature_dim}: the surgery needs a joint embedding space"
            )
        return feats

    def _encode_captions(self, captions: list[str], use_cache: bool) -> Tensor:
        if not use_cache:
            return self._encode_caption_list(captions)
        self.text_cache.capacity = self.config.text_cache_size  # the config stays the source
        feats = self.text_cache.features(captions, self._encode_caption_list)
        return feats.to(self.device)

    def _encode_caption_list(self, captions: list[str]) -> Tensor:
        return self._post(self.encoder.encode_text(self.encoder.tokenize(captions)))

    def clear_caches(self) -> None:
        """Forget cached text features and teacher outputs (e.g. after changing the model)."""
        self.text_cache.clear()
        self.teacher_cache.clear()

    def clear_teacher_cache(self) -> None:
        """Forget cached teacher outputs (e.g. after changing the teacher head)."""
        self.teacher_cache.clear()

    # -- the step -----------------------------------------------------------------------------
    def _features(self, images: Tensor, need_teacher: bool) -> tuple[Tensor, Tensor | None]:
        """Student features (grad) and, if asked, teacher features (no grad), sharing the
        frozen trunk below the first adapted block when possible."""
        start = self._trunk_start
        enc = self.encoder
        if (
            need_teacher
            and start > 0
            and self.config.shared_trunk
            and self._teacher_encoder is None
        ):
            try:
                with torch.no_grad():
                    hidden, state = enc.encode_image_split(images, start)
            except NotImplementedError:
                pass
            else:
                with torch.no_grad(), adapters_disabled(enc.image_tower):
                    pooled = enc.encode_image_from(hidden, state, start, pooled_only=True)
                    teacher = self._post(pooled)
                student = self._post(enc.encode_image_from(hidden, state, start))
                return student, teacher
        f_teacher = self.encode_teacher(images) if need_teacher else None
        return self.encode_student(images), f_teacher

    def forward(self, images: Tensor, text: Any, labels: Any, index: Any = None) -> DGSOutput:
        """One DGS training step's loss; call `.backward()` on `out.loss`.

        `index`: optional dataset indices of the images. Passing them declares that an
        index always maps to the same preprocessed image (deterministic transforms); the
        teacher's outputs are then cached per index and later epochs skip its forward.

        Bad input raises `TypeError`/`ValueError` naming what was expected; with
        `config.nonfinite="raise"` (default) so do NaN/Inf images or text features
        (`"ignore"` lets the non-finite loss through for the trainer to handle).

        Args:
            images: `(B, 3, H, W)` pixels.
            text: `B` captions (strings), their tokens, or `(B, D)` text features.
            labels: `(B,)` labels, 0 = real, 1 = fake.
            index: `(B,)` dataset indices of the images, or `None` (see above).

        Returns:
            The loss and its parts (`DGSOutput`).

        Raises:
            TypeError: an input of the wrong kind or dtype.
            ValueError: an input of the wrong shape or value.
            NonFiniteInputError: NaN/Inf images or text features with `nonfinite="raise"`.
        """
        cfg = self.config
        batch = self._check_images(images)
        y = self._check_labels(labels, batch)
        index = self._check_index(index, batch)
        check_finite = cfg.nonfinite == "raise"
        distill = cfg.feature_distill > 0
        if cfg.plain:
            return self._plain_step(images, y, check_finite)

        t = self.encode_text(text, batch_size=batch)
        # read below together with the teacher reference's check: one device sync in all
        inputs_ok = self._inputs_finite(images, t) if check_finite else None
        kind = self._loss_kind
        closed = cfg.closed_form_heads and kind is not None
        f, f_teacher, z_teacher = student_and_teacher(self, images, index, closed, distill)

        # "invariant" scale: per-sample reference gradients (no 1/B), so that neither the
        # alignment weight nor the projection's eps depends on the (per-rank) batch size
        per_sample = cfg.align_scale == "invariant"
        # text head: trains on detached text features; its input gradient is the harm reference
        loss_text, g_text = text_reference(self, t, y, closed, per_sample)

        losses: dict[str, Tensor] = {"text": loss_text.detach()}
        stats = SurgeryStats()
        f_s = f
        if self.rule is not None:
            refs = {"harm": g_text.to(f.dtype)}
            f_s = GradientSurgery.apply(f, self.rule, refs, stats, cfg.nonfinite)
        logits = self.image_head(f_s)
        loss_img = self._loss(logits, y)
        loss = loss_img + loss_text
        losses["image"] = loss_img.detach()

        if cfg.alignment:
            assert z_teacher is not None
            with torch.no_grad():
                losses["teacher"] = self._loss(z_teacher, y).detach()
            g_help, inputs_ok = help_reference(
                self, f_teacher, z_teacher, y, closed, per_sample, f.dtype, inputs_ok, images, t
            )
            stats.extra_refs["help"] = g_help
            target = f_s if cfg.order == "align_then_project" else f
            inner = (target * g_help).sum(dim=-1)
            loss_align = inner.mean()
            loss = loss + cfg.align_weight * loss_align
            losses["align"] = loss_align.detach()
        if distill:
            # on the raw features f, not f_s: this gradient bypasses the projection
            assert f_teacher is not None
            loss_fd = F.mse_loss(f, f_teacher.to(f.dtype))
            loss = loss + cfg.feature_distill * loss_fd
            losses["distill"] = loss_fd.detach()
        if inputs_ok is not None and not bool(inputs_ok):
            self._raise_nonfinite_inputs(images, t)
        return DGSOutput(loss=loss, logits=logits, losses=losses, surgery=stats)

    def _plain_step(self, images: Tensor, y: Tensor, check_finite: bool) -> DGSOutput:
        """`config.plain`: the student's loss alone (no text, no surgery), plus
        `feature_distill * MSE(f, f_T)` when feature distillation is on."""
        if check_finite and not bool(self._inputs_finite(images)):
            self._raise_nonfinite_inputs(images)
        weight = self.config.feature_distill
        if weight <= 0:
            logits = self.image_head(self.encode_student(images))
            loss = self._loss(logits, y)
            return DGSOutput(loss=loss, logits=logits, losses={"image": loss.detach()})
        f, f_teacher = self._features(images, True)
        assert f_teacher is not None
        logits = self.image_head(f)
        loss_img = self._loss(logits, y)
        loss_fd = F.mse_loss(f, f_teacher.to(f.dtype))
        losses = {"image": loss_img.detach(), "distill": loss_fd.detach()}
        return DGSOutput(loss=loss_img + weight * loss_fd, logits=logits, losses=losses)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Student logits only: the cost of the plain fine-tuned model. Runs in eval mode
        (no LoRA dropout), then restores the module's training flag.

        Args:
            images: `(B, 3, H, W)` pixels.

        Returns:
            The image head's logits, one row per image.
        """
        self._check_images(images)
        was_training = self.training
        self.eval()
        try:
            return self.image_head(self.encode_student(images))
        finally:
            self.train(was_training)

    # -- stage 1 ------------------------------------------------------------------------------
    def fit_teacher_head(
        self,
        loader: Iterable[Any],
        epochs: int = 3,
        lr: float = 1e-4,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        progress: bool = False,
        cache_features: bool = True,
    ) -> list[float]:
        """Stage 1: train `teacher_head` as a linear probe on frozen teacher features.

        `loader` yields batches `(images, captions, labels[, index, ...])`, `(images,
        labels)` or mappings with keys `images`, `labels` and optionally `index`. With
        indices, the teacher features of the first epoch are kept (on the CPU) for the later
        epochs (`cache_features`), and the final head's logits fill the teacher cache that
        stage 2 reads. Returns the mean loss of each epoch.

        Args:
            loader: the batches (see above).
            epochs: passes over `loader`.
            lr: the Adam learning rate.
            betas: the Adam betas.
            progress: show a progress bar.
            cache_features: keep the first epoch's teacher features for the later ones.

        Returns:
            The mean loss of each epoch.
        """
        return fit_teacher_head(
            self,
            loader,
            epochs,
            lr,
            betas=betas,
            progress=progress,
            cache_features=cache_features,
        )

    # -- checkpoints (dgsnet.checkpoint) ------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write LoRA weights and the three heads (safetensors) and the config (JSON),
        each atomically; the JSON, written last, records the weights' sha256.

        See `dgsnet.checkpoint.save_dgs_checkpoint`.

        Args:
            directory: the folder to write (created if needed).

        Returns:
            The folder, as a `Path`.
        """
        return save_dgs_checkpoint(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, model: Any, tokenizer: Any = None, loss_fn: LossFn | None = None
    ) -> DGSWrapper:
        """Rebuild a wrapper around a fresh `model` (the same architecture as when saved)
        and load the LoRA weights and heads.

        Args:
            directory: the folder `save_pretrained` wrote.
            model: a fresh model of the saved architecture.
            tokenizer: the model's tokenizer (needed for string captions).
            loss_fn: the custom loss the wrapper was built with, if any.

        Returns:
            The wrapper, with the saved weights and config.

        Raises:
            CheckpointError: (`dgsnet.io`) the folder is damaged or does not fit
                `model`.
        """
        meta = read_checkpoint_meta(directory)
        config = config_from_meta(meta, directory)
        wrapper = cls(model, tokenizer, config, loss_fn=loss_fn)
        load_dgs_checkpoint(wrapper, directory, meta)
        return wrapper

    def load_checkpoint(self, directory: str | Path, _meta: dict[str, Any] | None = None) -> None:
        """Load weights written by `save_pretrained` into this wrapper (strict).

        See `dgsnet.checkpoint.load_dgs_checkpoint`.

        Args:
            directory: the folder `save_pretrained` wrote.
            _meta: the folder's JSON, when already read (internal).

        Raises:
            CheckpointError: the folder is damaged or does not fit this wrapper.
        """
        load_dgs_checkpoint(self, directory, _meta)
