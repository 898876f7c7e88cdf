"""`DGSWrapper`: DGS-Net fine-tuning of a CLIP-like dual encoder inside your own loop.

The step is described in the package docstring (`dgsnet.wrapper`) and in `docs/wrapper.md`.
The pieces around it live beside this module: the input checks (`validation`), the heads'
loss (`heads`), the two references (`references`) and the loss terms (`terms`), the text and
teacher branches (`text`, `teacher`) with their caches (`caches`) and caption look-up
(`captions`), checkpoint files (`checkpoint`), stage 1 (`stage1`), LoRA (`lora`) and the
returned objects (`output`). Each takes values or a small protocol of this class's public
members, never the class itself.

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

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import DualEncoder, wrap_encoder
from ..surgery import SurgeryRule
from .caches import TeacherCache, TextCache
from .captions import CaptionSource, as_source
from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_dgs_checkpoint,
    read_pretrained,
    save_dgs_checkpoint,
)
from .config import DGSConfig
from .heads import HeadLoss, LossFn, check_image_head
from .locate import pretrained_folder, require_base_model
from .lora import attach_lora, lora_spec
from .output import DGSOutput, SurgeryResult
from .sharing import PushResult, push_wrapper
from .stage1 import BatchFn, Stage1Batch, fit_teacher_head
from .teacher import TeacherBranch, copy_teacher, find_trunk_start
from .terms import dgs_terms, suppression_rule
from .text import TextBranch
from .validation import (
    BatchChecker,
    Placement,
    base_weight_name,
    check_heads_placement,
    first_floating,
    inputs_finite,
    tensor_at,
)

__all__ = ["DGSWrapper", "DGSOutput", "SurgeryResult", "WEIGHTS_NAME", "CONFIG_NAME"]


class DGSWrapper(nn.Module):
    """DGS-Net around a CLIP-like dual encoder (see the module docstring).

    Args:
        model: open_clip / OpenAI CLIP model (the `clip` package or a vendored copy), Hugging
            Face `CLIPModel`/`SiglipModel`, or a `DualEncoder`. It is modified in place:
            frozen, LoRA injected into its image tower (and, for open_clip / OpenAI CLIP, its
            attention split into q/k/v projections; the function is unchanged), so your own
            forward of it runs the fine-tuned encoder.
        tokenizer: turns caption strings into tokens (`open_clip.get_tokenizer(name)`, OpenAI
            `clip.tokenize`, a Hugging Face tokenizer or processor); optional when captions
            come as tokens or features, or when suppression is off.
        config: a `DGSConfig` (the default one when `None`).
        loss_fn: optional `loss_fn(logits, labels) -> scalar` replacing BCE/CE for all three
            heads (reference gradients then come from autograd on the heads).
        image_head: your own head, an `nn.Module` mapping the `(B, D)` image features to
            `(B, num_classes)` logits (e.g. the `fc` of your detector). The wrapper trains it
            (it is in `trainable_parameters()`), uses it for the task loss, `predict` and
            checkpoints, and never copies it, so your model's own forward scores with the
            trained head. `None`: a new `nn.Linear(D, num_classes)`.
        captions: where captions come from when a step gets none (see `CaptionSource`): a
            `dgsnet.data.CaptionStore` or a dict looked up by the batch's `paths=`, a list
            or dict looked up by `index=`, a callable, or a fixed template string.

    Raises:
        TypeError: a `config`, `loss_fn` or `image_head` of the wrong kind, or an unknown model.
        EncoderError: (`dgsnet.errors`) the text tower fails on one caption (with
            suppression on), or `image_head` does not map `D` features to `num_classes` logits.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        config: DGSConfig | None = None,
        loss_fn: LossFn | None = None,
        *,
        image_head: nn.Module | None = None,
        captions: Any = None,
    ) -> None:
        super().__init__()
        config = DGSConfig() if config is None else config
        if not isinstance(config, DGSConfig):
            raise TypeError(f"config must be a DGSConfig, got {type(config).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.config = config
        """The configuration this wrapper was built with (frozen)."""
        self.encoder: DualEncoder = wrap_encoder(model, tokenizer)
        """The adapter that gives the wrapped model one interface (`dgsnet.encoders`)."""
        self.model = self.encoder.model  # registers every weight as a submodule
        """The wrapped model itself (LoRA inside its image tower): every weight is registered
        here."""
        self.loss_fn = loss_fn
        """A loss of your own for all three heads, or `None` for the config's loss."""
        self.head_loss = HeadLoss(
            None if loss_fn is not None else config.loss_kind,
            loss_fn,
            closed_form=config.closed_form_heads,
        )
        """The heads' loss and its closed-form input gradients (`HeadLoss`)."""
        self.feature_dim = self.encoder.feature_dim()
        """`D`, the width of the joint image-text features the surgery works on."""
        # every check that can refuse the model runs before LoRA changes it
        before = first_floating(self.encoder.image_tower)
        if image_head is not None:
            check_image_head(image_head, self.feature_dim, config.num_classes, *before)
        if config.suppression:
            self.encoder.check_text_tower(self.feature_dim)
        self.teacher_model: nn.Module | None = None
        """The frozen copy used as the teacher with `teacher="copy"`, else `None` (the teacher is
        the model with adapters off)."""
        teacher_encoder: DualEncoder | None = None
        if config.teacher == "copy":
            self.teacher_model, teacher_encoder = copy_teacher(self.encoder, tokenizer)
        # attach_lora freezes the whole model, and the head may live inside it
        head = image_head if isinstance(image_head, nn.Module) else nn.Module()
        head_flags = [(p, p.requires_grad) for p in head.parameters()]
        self.lora_modules: list[str] = attach_lora(self.encoder, lora_spec(config))
        """The names of the modules LoRA adapted."""
        for p, flag in head_flags:
            p.requires_grad_(flag)
        self._probe_name = base_weight_name(self.encoder.image_tower)
        self.checker = BatchChecker(
            self.placement,
            image_size=self.encoder.image_size,
            num_classes=config.num_classes,
            custom_loss=loss_fn is not None,
        )
        """The step's input checks (`BatchChecker`), bound to this model."""
        self._build_heads(image_head)
        self.rule: SurgeryRule | None = suppression_rule(config)
        """The step's surgery rule, Orthogonal Suppression (`suppression_rule`), or `None`
        when suppression is off; Prior Alignment is a loss term (`dgs_terms`), not a rule."""
        self.text_cache = TextCache(config.text_cache_size)
        """Text features by caption (LRU); its capacity is `config.text_cache_size`."""
        self.teacher_cache = TeacherCache()
        """Teacher logits by dataset index (filled when `index` is passed to the step)."""
        self.text = TextBranch(
            self.encoder,
            self.feature_dim,
            self._post,
            self.text_cache,
            self._text_placement,
            as_source(captions),
        )
        """The text branch (`TextBranch`): caption features for the step."""
        self.teacher = TeacherBranch(
            self.encoder,
            teacher_encoder,
            self._post,
            self.teacher_head,
            self.teacher_cache,
            find_trunk_start(self.lora_modules, self.encoder.block_pattern),
        )
        """The teacher branch (`TeacherBranch`): the frozen encoder's features and logits."""

    def _build_heads(self, image_head: nn.Module | None) -> None:
        where = self.placement()
        dim, classes = self.feature_dim, self.config.num_classes
        dtype = where.dtype if where.dtype is not None else torch.get_default_dtype()
        kw: dict[str, Any] = {"device": where.device, "dtype": dtype}
        self.image_head: nn.Module = (
            nn.Linear(dim, classes, **kw) if image_head is None else image_head
        )
        self.text_head = nn.Linear(dim, classes, **kw)
        self.teacher_head = nn.Linear(dim, classes, **kw)
        self.teacher_head.requires_grad_(False)

    def placement(self) -> Placement:
        """The device and floating dtype of the image tower's weights (read each call, so
        they follow `.to()` and `.half()`): what images must match."""
        p = tensor_at(self.encoder.image_tower, self._probe_name)
        if p is None:  # e.g. flattened away by a sharding wrapper: any floating weight
            p = next((q for q in self.model.parameters() if q.is_floating_point()), None)
        if p is not None:
            return Placement(p.device, p.dtype)
        return Placement(next(self.model.parameters()).device, None)

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return self.placement().device

    def _text_placement(self) -> tuple[torch.device, torch.dtype]:
        return self.device, self.text_head.weight.dtype

    def _check_placement(self) -> None:
        heads = {"text": self.text_head, "teacher": self.teacher_head, "image": self.image_head}
        check_heads_placement(self.placement(), heads, own=("text", "teacher"))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """LoRA parameters of the image tower, the image head and the text head."""
        for _, p in self.named_trainable_parameters():
            yield p

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """`trainable_parameters` with names (`lora.<module>`, `image_head.<name>`,
        `text_head.<name>`); the image head's frozen parameters, if any, are left out."""
        for n, p in self.encoder.image_tower.named_parameters():
            if "lora_" in n:
                yield f"lora.{n}", p
        for prefix, head in (("image_head", self.image_head), ("text_head", self.text_head)):
            for n, p in head.named_parameters():
                if p.requires_grad or prefix == "text_head":
                    yield f"{prefix}.{n}", p

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

    def encode_teacher(self, images: Tensor) -> Tensor:
        """Teacher image features: the pre-fine-tuning encoder (adapters off), no grad.

        Args:
            images: `(B, 3, H, W)` pixels.

        Returns:
            `(B, D)` features, detached.
        """
        return self.teacher.encode(images)

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
            TypeError: `text` is none of the accepted kinds (`None` included: the message
                lists the ways to provide captions).
            ValueError: wrong shape, empty list, or `batch_size` rows not matched.
        """
        return self.text.encode(text, batch_size, use_cache)

    @property
    def captions(self) -> CaptionSource | None:
        """Where a step's captions come from when it gets none (`CaptionSource`), or `None`.
        Assign a caption source (anything `DGSWrapper(captions=...)` takes) to change it."""
        return self.text.captions

    @captions.setter
    def captions(self, source: Any) -> None:
        self.text.captions = as_source(source)

    def clear_caches(self) -> None:
        """Forget cached text features and teacher outputs (e.g. after changing the model)."""
        self.text_cache.clear()
        self.teacher_cache.clear()

    def clear_teacher_cache(self) -> None:
        """Forget cached teacher outputs (e.g. after changing the teacher head)."""
        self.teacher_cache.clear()

    def features(self, images: Tensor, need_teacher: bool) -> tuple[Tensor, Tensor | None]:
        """Student features (grad) and, if asked, teacher features (no grad), sharing the
        frozen trunk below the first adapted block when possible (`config.shared_trunk`).

        Args:
            images: `(B, 3, H, W)` pixels, checked.
            need_teacher: compute the teacher's features too.

        Returns:
            `(f, f_teacher)`; `f_teacher` is `None` when not asked for.
        """
        return self.teacher.features(images, need_teacher, self.config.shared_trunk)

    def _teacher_outputs(
        self, images: Tensor | None, index: Tensor | None, student: bool
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        cfg = self.config
        closed = cfg.closed_form_heads and not self.head_loss.custom
        return self.teacher.for_step(
            images,
            index,
            student=student,
            alignment=cfg.alignment,
            distill=cfg.feature_distill > 0,
            use_cache=cfg.alignment and closed and cfg.teacher_cache,
            shared_trunk=cfg.shared_trunk,
        )

    def forward(
        self,
        images: Tensor,
        text: Any = None,
        labels: Any = None,
        index: Any = None,
        *,
        paths: Sequence[Any] | None = None,
    ) -> DGSOutput:
        """One DGS training step's loss; call `.backward()` on `out.loss`.

        `index`: optional dataset indices of the images. Passing them declares that an
        index always maps to the same preprocessed image (deterministic transforms); the
        teacher's outputs are then cached per index and later epochs skip its forward.

        Bad input raises `TypeError`/`ValueError` naming what was expected; with
        `config.nonfinite="raise"` (default) so do NaN/Inf images or text features
        (`"ignore"` lets the non-finite loss through for the trainer to handle).

        Args:
            images: `(B, 3, H, W)` pixels.
            text: `B` captions (strings), their tokens, or `(B, D)` text features; `None`
                to look them up in the wrapper's caption source (`captions=`) by `paths`
                or `index`. Not used (no text forward) when suppression is off.
            labels: `(B,)` labels, 0 = real, 1 = fake (class indices for `num_classes > 1`).
            index: `(B,)` dataset indices of the images, or `None` (see above).
            paths: the images' file paths, to look captions up by path.

        Returns:
            The loss and its parts (`DGSOutput`).

        Raises:
            TypeError: an input of the wrong kind or dtype, or no labels.
            ValueError: an input of the wrong shape or value, no captions where
                suppression needs them, or a head on another device than the model.
            NonFiniteInputError: NaN/Inf images or text features with `nonfinite="raise"`.
        """
        cfg = self.config
        batch = self.checker.images(images)
        y = self.checker.labels(labels, batch)
        index = self.checker.index(index, batch)
        self._check_placement()
        t = self.text.for_step(text, batch, index, paths) if cfg.suppression else None
        # read below together with the teacher reference's check: one device sync in all
        inputs_ok = inputs_finite(images, t) if cfg.nonfinite == "raise" else None
        f, f_teacher, z_teacher = self._teacher_outputs(images, index, student=True)
        assert f is not None
        f_s, terms, parts, stats = dgs_terms(
            self, f, y, t, (f_teacher, z_teacher), inputs_ok, images
        )
        logits = self.image_head(f_s)
        loss = self.head_loss(logits, y)
        losses = {"text": parts.pop("text")} if "text" in parts else {}
        losses["image"] = loss.detach()
        losses.update(parts)
        for term in terms:
            loss = loss + term
        return DGSOutput(loss=loss, logits=logits, losses=losses, surgery=stats)

    def apply_surgery(
        self,
        features: Tensor,
        labels: Any,
        captions: Any = None,
        *,
        images: Tensor | None = None,
        index: Any = None,
        paths: Sequence[Any] | None = None,
    ) -> SurgeryResult:
        """The DGS surgery on features your own model computed, for your own head and loss.

        Use it where the CLIP image encoder is one branch of a larger detector: compute the
        branch's features with grad, pass them here, and train on

        ```python
        res = dgs.apply_surgery(f, labels, captions, images=images)
        loss = your_loss(your_head(res.features), labels) + res.loss
        ```

        `res.features` are `features` (the same values) with the gradient surgery attached;
        `res.loss` holds the text head's loss, the weighted alignment term and, when
        configured, the weighted feature distillation. With `image_head` set to your head
        and its loss the wrapper's, the LoRA gradients equal those of
        `dgs(images, captions, labels)`.

        Args:
            features: `(B, D)` image features with grad, from the encoder LoRA adapts.
            labels: `(B,)` labels.
            captions: `B` captions, tokens or text features; `None` to use the caption
                source (by `paths`/`index`). Not used when suppression is off.
            images: the `(B, 3, H, W)` images `features` came from: the teacher's features
                are computed from them (adapters off). Needed for Prior Alignment unless
                `index` finds the teacher's logits cached, and always for feature distillation.
            index: `(B,)` dataset indices (the teacher cache and caption look-up).
            paths: the images' file paths (caption look-up).

        Returns:
            `SurgeryResult` with `.features`, `.loss`, `.losses` and `.stats`.

        Raises:
            TypeError, ValueError: bad input (named), or no `images` where the teacher is needed.
        """
        cfg = self.config
        batch = self.checker.features(features, self.feature_dim)
        y = self.checker.labels(labels, batch)
        index = self.checker.index(index, batch)
        self._check_placement()
        if images is not None and self.checker.images(images) != batch:
            raise ValueError(f"images has {images.shape[0]} rows for {batch} feature rows")
        t = self.text.for_step(captions, batch, index, paths) if cfg.suppression else None
        inputs_ok = inputs_finite(images, t) if cfg.nonfinite == "raise" else None
        _, f_teacher, z_teacher = self._teacher_outputs(images, index, student=False)
        f_s, terms, losses, stats = dgs_terms(
            self, features, y, t, (f_teacher, z_teacher), inputs_ok, images
        )
        loss = features.new_zeros(())
        for term in terms:
            loss = loss + term
        return SurgeryResult(features=f_s, loss=loss, losses=losses, surgery=stats)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Student logits only: the cost of the plain fine-tuned model. Runs in eval mode
        (no LoRA dropout), then restores the module's training flag.

        Args:
            images: `(B, 3, H, W)` pixels.

        Returns:
            The image head's logits, one row per image.
        """
        self.checker.images(images)
        self._check_placement()
        was_training = self.training
        self.eval()
        try:
            return self.image_head(self.encode_student(images))
        finally:
            self.train(was_training)

    def fit_teacher_head(
        self,
        loader: Iterable[Any],
        epochs: int = 3,
        lr: float = 1e-4,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        progress: bool = False,
        cache_features: bool = True,
        batch_fn: BatchFn | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
        index_key: str | None = None,
    ) -> list[float]:
        """Stage 1: train `teacher_head` as a linear probe on frozen teacher features.

        The loader is taken as it is (`Stage1Batch` lists the batch forms read); batches
        are moved to the model's device. With indices, the first epoch's teacher features are
        kept for the later epochs (`cache_features`) and the final head's logits fill the
        teacher cache that stage 2 reads. A one-shot iterator with `epochs > 1` is refused.

        Args:
            loader: the batches, re-iterable when `epochs > 1`.
            epochs: passes over `loader`.
            lr: the Adam learning rate.
            betas: the Adam betas.
            progress: show a progress bar.
            cache_features: keep the first epoch's teacher features for the later ones.
            batch_fn: turns one batch into `(images, labels)` or `(images, labels, index)`.
            image_key: the images' key in dict batches.
            label_key: the labels' key in dict batches.
            index_key: the dataset indices' key in dict batches.

        Returns:
            The mean loss of each epoch.
        """
        reader = Stage1Batch(batch_fn, image_key, label_key, index_key)
        options = {"betas": betas, "progress": progress, "cache_features": cache_features}
        return fit_teacher_head(self, loader, epochs, lr, reader=reader, **options)  # type: ignore[arg-type]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write LoRA weights and the three heads (safetensors) and the config (JSON),
        each atomically; the JSON, written last, records the weights' sha256
        (`dgsnet.wrapper.checkpoint.save_dgs_checkpoint`).

        Args:
            directory: the folder to write (created if needed).

        Returns:
            The folder, as a `Path`.
        """
        return save_dgs_checkpoint(self, directory)

    def push_to_hub(self, repo_id: str, *, model: str | None = None, **kwargs: Any) -> PushResult:
        """Upload the wrapper to the Hugging Face Hub with a generated model card.

        The repository holds `final/` (`save_pretrained`'s files) and `README.md`; it loads
        back with `DGSWrapper.from_pretrained("hf-hub:org/name", model)`, and with
        `dgsnet.evaluation.load_trained("hf-hub:org/name")` when `model` names the base
        model's spec. To share a whole `dgsnet train` run (its data description and
        evaluation tables too), use `dgsnet push RUN_DIR org/name`.

        Args:
            repo_id: `org/name` (or `hf-hub:org/name[@revision]`).
            model: the base model's spec (e.g. `"ViT-L-14@openai"`), or `None`.
            **kwargs: `license`, `revision`, `private`, `token`, `commit_message` (see
                `dgsnet.wrapper.sharing.push_wrapper`).

        Returns:
            The repository, branch and files uploaded (`PushResult`).
        """
        return push_wrapper(self, repo_id, model=model, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        model: Any = None,
        tokenizer: Any = None,
        loss_fn: LossFn | None = None,
        *,
        image_head: nn.Module | None = None,
        captions: Any = None,
        revision: str | None = None,
    ) -> DGSWrapper:
        """Rebuild a wrapper around a fresh `model` (the same architecture as when saved),
        with the saved config, and load the LoRA weights and heads.

        Args:
            directory: the folder `save_pretrained` wrote, or a Hub repository id
                (`"org/name"`, `"hf-hub:org/name"`; see `dgsnet.wrapper.locate`).
            model: a fresh model of the saved architecture (required; to build it from a
                run folder's recorded spec, use `dgsnet.evaluation.load_trained`).
            tokenizer: the model's tokenizer (needed for string captions).
            loss_fn: the custom loss the wrapper was built with, if any.
            image_head: a fresh head of the saved class, when the wrapper was saved with
                your own head (its weights are loaded into it).
            captions: the caption source (see `DGSWrapper`).
            revision: the Hub revision (branch, tag or commit), for a repository id.

        Returns:
            The wrapper, with the saved weights and config.

        Raises:
            CheckpointError: (`dgsnet.io`) the folder is damaged or does not fit
                `model`, it was saved with your own head and none was passed, no `model`
                was given, or a repository id cannot be resolved.
        """
        require_base_model(model, directory)
        directory = pretrained_folder(directory, revision)
        meta, config = read_pretrained(directory, image_head is not None)
        wrapper = cls(
            model, tokenizer, config, loss_fn=loss_fn, image_head=image_head, captions=captions
        )
        load_dgs_checkpoint(wrapper, directory, meta)
        return wrapper

    def load_checkpoint(self, directory: str | Path, _meta: dict[str, Any] | None = None) -> None:
        """Load weights written by `save_pretrained` into this wrapper (strict).

        The checkpoint must have been trained with this wrapper's config in every setting
        that changes what the weights compute (LoRA rank, alpha, scaling, targets and layers,
        `normalize_features`, the classes and loss); `from_pretrained` adopts the saved one.

        Args:
            directory: the folder `save_pretrained` wrote.
            _meta: the folder's JSON, when already read (internal).

        Raises:
            CheckpointError: the folder is damaged, does not fit this wrapper, or was
                trained with a config that computes something else.
        """
        load_dgs_checkpoint(self, directory, _meta)
