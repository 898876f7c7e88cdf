r"""``DGSWrapper``: DGS-Net fine-tuning of a CLIP-like dual encoder inside your own loop.

Per batch of ``B`` images with captions and labels the wrapper computes (see
``docs/wrapper.md`` and ``../shared/reference/dgs-reference.md``):

* student features ``f = E_img(x)`` (LoRA on), teacher features ``f_T`` (adapters off, no
  grad), text features ``t`` (frozen text tower, cached per caption);
* ``L_img = loss(h(f'), y)`` with ``f' = GradientSurgery(f, OrthogonalSuppression, harm=g_text)``,
  ``L_text = loss(h_t(t), y)``, ``L_T = loss(h_T(f_T), y)`` (value only),
  ``g_text = dL_text/dt`` and ``g_img = dL_T/df_T`` (closed form for linear heads);
* the alignment term ``L_align = mean_b <f'_b, min(g_img_b, 0)>``, attached to ``f'`` so that
  the projection also sees it (the reference order), or to ``f`` (project first, then align:
  the paper's order). With ``align_scale="reference"`` the references are the gradients of the
  mean-reduced losses (each carries ``1/B``, so the alignment is weighted ``lambda/B``, as in the
  released code); with ``"invariant"`` they are per-sample gradients (no ``1/B``), which makes
  the step independent of the batch size, ``eps`` included;
* ``loss = L_img + L_text + align_weight * L_align`` (``+ feature_distill * MSE(f, f_T)``
  when feature distillation is on; taken on the raw features ``f``, so the projection does
  not act on its gradient).

Realising the alignment as a loss term rather than inside the backward hook gives the same
gradient as ``PriorAlignment`` and keeps it correct under loss scaling and data parallelism.

>>> import open_clip                                                  # doctest: +SKIP
>>> model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")
>>> dgs = DGSWrapper(model, open_clip.get_tokenizer("ViT-L-14"), DGSConfig.reference())
>>> out = dgs(images, captions, labels); out.loss.backward()
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DGSConfig
from .encoders import DualEncoder, wrap_encoder
from .heads import LossFn, classification_loss, input_grad
from .io import CheckpointError, atomic_write_json, load_tensors, save_tensors
from .lora import LoRASpec, adapters_disabled, attach_lora, check_no_merge
from .surgery import GradientSurgery, OrthogonalSuppression, SurgeryRule, SurgeryStats, fuse

__all__ = ["DGSWrapper", "DGSOutput", "WEIGHTS_NAME", "CONFIG_NAME"]

_MAX_INDEX = 2**31  # dataset indices key a dense cache; larger ones are not positions

WEIGHTS_NAME = "dgs_weights.safetensors"
CONFIG_NAME = "dgs_config.json"
FORMAT_VERSION = 1


@dataclass
class DGSOutput:
    """What :meth:`DGSWrapper.forward` returns.

    ``loss`` is ready for ``.backward()``; ``logits`` are the student's; ``losses`` holds the
    detached parts (``image``, ``text``, ``teacher``, ``align``, and ``distill``, the
    unweighted ``MSE(f, f_T)``, when ``feature_distill > 0``); ``stats`` the surgery
    diagnostics as floats, available after ``loss.backward()`` (empty before).
    """

    loss: Tensor
    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    surgery: SurgeryStats | None = None

    @property
    def stats(self) -> dict[str, float]:
        return self.surgery.summary() if self.surgery is not None else {}


def _register_output_pytree() -> None:
    """Make :class:`DGSOutput` a pytree node, so that ``DistributedDataParallel`` finds its
    tensors. DDP routes the forward output through its ``_DDPSink`` with ``tree_flatten``
    (``static_graph=True``, ``find_unused_parameters=True``); an unregistered dataclass is an
    opaque leaf there, and with ``static_graph=True`` the first step's gradients were then never
    all-reduced (each rank kept its local gradient). ``tests/test_distributed.py`` checks this."""
    try:
        from torch.utils import _pytree as pytree
    except ImportError:  # pragma: no cover - very old torch
        return
    register = getattr(pytree, "register_pytree_node", None) or getattr(
        pytree, "_register_pytree_node", None
    )
    if register is None:  # pragma: no cover
        return
    try:
        register(
            DGSOutput,
            lambda o: ([o.loss, o.logits, o.losses, o.surgery], None),
            lambda values, _ctx: DGSOutput(*values),
        )
    except ValueError:  # already registered (module reloaded)
        pass


_register_output_pytree()


class _IndexCache:
    """Rows keyed by a non-negative integer dataset index, kept on the CPU; grows on demand."""

    def __init__(self) -> None:
        self.data: Tensor | None = None
        self.filled = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    def clear(self) -> None:
        self.data = None
        self.filled = torch.zeros(0, dtype=torch.bool)

    def lookup(self, index: Tensor) -> Tensor | None:
        """The rows for ``index`` if every one is cached, else ``None``."""
        if self.data is None:
            return None
        idx = index.cpu()
        if int(idx.max()) >= self.filled.numel() or not bool(self.filled[idx].all()):
            return None
        return self.data[idx]

    def store(self, index: Tensor, rows: Tensor) -> None:
        idx = index.cpu()
        rows = rows.detach().cpu()
        need = int(idx.max()) + 1
        if self.data is None or self.data.shape[1:] != rows.shape[1:] or self.data.dtype != rows.dtype:
            self.data = rows.new_zeros((max(need, 1024), *rows.shape[1:]))
            self.filled = torch.zeros(self.data.shape[0], dtype=torch.bool)
        elif need > self.data.shape[0]:
            size = max(need, 2 * self.data.shape[0])
            grown = rows.new_zeros((size, *rows.shape[1:]))
            grown[: self.data.shape[0]] = self.data
            filled = torch.zeros(size, dtype=torch.bool)
            filled[: self.filled.numel()] = self.filled
            self.data, self.filled = grown, filled
        self.data[idx] = rows
        self.filled[idx] = True


class DGSWrapper(nn.Module):
    """DGS-Net around a CLIP-like dual encoder (see the module docstring).

    Args:
        model: open_clip / OpenAI CLIP model, Hugging Face ``CLIPModel``/``SiglipModel``, or a
            :class:`~dgsnet.encoders.DualEncoder`. It is modified in place: frozen, LoRA
            injected into its image tower (and, for open_clip, its attention split into
            q/k/v projections; the function is unchanged).
        tokenizer: turns caption strings into tokens (``open_clip.get_tokenizer(name)``, a
            Hugging Face tokenizer); optional when captions come as tokens or features.
        config: a :class:`DGSConfig`.
        loss_fn: optional ``loss_fn(logits, labels) -> scalar`` replacing BCE/CE for all three
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
            rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
            targets=tuple(config.lora_targets) if config.lora_targets else None,
            layers=tuple(config.lora_layers) if config.lora_layers else None,
            scaling=config.lora_scaling,
        )
        self.lora_modules: list[str] = attach_lora(self.encoder, spec)
        dim = self.encoder.feature_dim()
        self.feature_dim = dim
        p = next(self.model.parameters())
        kw = {"device": p.device, "dtype": p.dtype if p.is_floating_point() else None}
        self.image_head = nn.Linear(dim, config.num_classes, **kw)
        self.text_head = nn.Linear(dim, config.num_classes, **kw)
        self.teacher_head = nn.Linear(dim, config.num_classes, **kw)
        self.teacher_head.requires_grad_(False)
        self.rule: SurgeryRule | None = None
        if config.suppression:
            rule: SurgeryRule = OrthogonalSuppression(eps=config.eps, conflict_only=config.conflict_only)
            self.rule = fuse(rule) if config.fused else rule
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self._teacher_cache = _IndexCache()
        self._trunk_start = self._find_trunk_start()
        # one base weight of the image tower, found once: its dtype is what images must match
        # (nn.Module.to converts parameters in place, so the reference stays current)
        self._dtype_probe: Tensor | None = next(
            (p for n, p in self.encoder.image_tower.named_parameters()
             if p.is_floating_point() and "lora_" not in n),
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

    # -- validation ---------------------------------------------------------------------------
    def _check_images(self, images: Any) -> int:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a tensor (B, 3, H, W), got {type(images).__name__}")
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a floating tensor of shape (B, 3, H, W), got shape "
                f"{tuple(images.shape)} and dtype {images.dtype}"
            )
        size = self.encoder.image_size
        if images.shape[1] != 3 or (size is not None and tuple(images.shape[2:]) != tuple(size)):
            want = f"(B, 3, {size[0]}, {size[1]})" if size else "(B, 3, H, W)"
            raise ValueError(f"images must have shape {want} for this model, got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("empty batch: images has batch size 0")
        if images.device != self.device:
            raise ValueError(f"images are on {images.device} but the model is on {self.device}")
        want = self._image_dtype()
        if want is not None and images.dtype != want and not _autocast_enabled(images.device.type):
            raise ValueError(
                f"images are {images.dtype} but the image tower's weights are {want}: cast them "
                f"(images.to({want})) or run under torch.autocast"
            )
        return images.shape[0]

    def _image_dtype(self) -> torch.dtype | None:
        return self._dtype_probe.dtype if self._dtype_probe is not None else None

    @staticmethod
    def _inputs_finite(images: Tensor, text: Tensor | None = None) -> Tensor:
        """A 0-d bool tensor: no NaN/Inf in the images (and text features). No device sync:
        the caller reads it together with the step's other checks."""
        ok = torch.isfinite(images).all()
        return ok if text is None else ok & torch.isfinite(text).all().to(ok.device)

    @staticmethod
    def _raise_nonfinite_inputs(images: Tensor, text: Tensor | None = None) -> None:
        """Raise a ``ValueError`` naming the samples whose images (or text features) hold
        NaN/Inf (``nonfinite="raise"``); return if there are none."""
        parts = []
        for what, t in (("images", images), ("text features", text)):
            if t is None:
                continue
            bad = (~torch.isfinite(t).flatten(1).all(dim=1)).nonzero().flatten().tolist()
            if bad:
                parts.append(f"{what} in {len(bad)} of {t.shape[0]} samples (batch positions "
                             f"{bad[:8]}{' ...' if len(bad) > 8 else ''})")
        if parts:
            raise ValueError(
                f"NaN or Inf in the input: {'; '.join(parts)}. Check the data pipeline, or set "
                "DGSConfig(nonfinite='ignore') to let the non-finite loss through to the trainer"
            )

    def _check_labels(self, labels: Any, batch: int) -> Tensor:
        if not isinstance(labels, Tensor):
            try:
                labels = torch.as_tensor(labels)
            except Exception as exc:
                raise TypeError(f"labels must be a tensor or a sequence of numbers, got {type(labels).__name__}") from exc
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 1 or labels.shape[0] != batch:
            raise ValueError(
                f"labels must have shape ({batch},) to match {batch} images, got {tuple(labels.shape)}"
            )
        if labels.is_complex():
            raise TypeError(f"labels must be real class indices, got dtype {labels.dtype}")
        # labels from a data loader live on the CPU: copy them without blocking and validate
        # the host copy, so that the check costs no device synchronisation
        host = labels if labels.device.type == "cpu" else None
        try:
            labels = labels.to(self.device, non_blocking=host is not None)
        except (RuntimeError, NotImplementedError) as exc:  # e.g. a meta tensor: no data
            raise ValueError(
                f"labels on {labels.device} cannot be moved to {self.device}: {exc}"
            ) from None
        if self.loss_fn is not None:
            return labels
        check = labels if host is None else host
        if check.is_floating_point():
            if not bool(torch.isfinite(check).all()) or not bool((check == check.round()).all()):
                raise ValueError(f"labels must be whole class indices, got {check.tolist()[:8]}")
        elif labels.dtype == torch.bool:
            labels, check = labels.long(), check.long()
        high = 1 if self.config.num_classes == 1 else self.config.num_classes - 1
        bad = (check < 0) | (check > high)
        if bool(bad.any()):
            vals = sorted({float(v) for v in check[bad].tolist()})[:8]
            expected = "{0, 1} (0 = real, 1 = fake)" if high == 1 else f"0..{high}"
            raise ValueError(f"labels must be in {expected}, got value(s) {vals}")
        return labels

    # -- encoders -----------------------------------------------------------------------------
    def _post(self, feats: Tensor) -> Tensor:
        return F.normalize(feats, dim=-1) if self.config.normalize_features else feats

    def encode_student(self, images: Tensor) -> Tensor:
        """Student image features (LoRA on), with grad."""
        return self._post(self.encoder.encode_image(images))

    @torch.no_grad()
    def encode_teacher(self, images: Tensor) -> Tensor:
        """Teacher image features: the pre-fine-tuning encoder (adapters off), no grad."""
        if self._teacher_encoder is not None:
            return self._post(self._teacher_encoder.encode_image_pooled(images))
        check_no_merge(self.encoder.image_tower)
        with adapters_disabled(self.encoder.image_tower):
            return self._post(self.encoder.encode_image_pooled(images))

    @torch.no_grad()
    def encode_text(self, text: Any, batch_size: int | None = None) -> Tensor:
        """Text features of the frozen text tower, no grad.

        ``text``: a list of caption strings (cached per caption, LRU bounded by
        ``config.text_cache_size``), token ids (``LongTensor (B, L)`` or a Hugging Face token
        mapping), or precomputed features (a floating tensor ``(B, D)``)."""
        if isinstance(text, str):
            raise TypeError("text must be a list of captions, got a single string")
        if isinstance(text, Tensor) and text.is_floating_point():
            if text.dim() != 2 or text.shape[1] != self.feature_dim:
                raise ValueError(
                    f"precomputed text features must have shape (B, {self.feature_dim}), got {tuple(text.shape)}"
                )
            if text.device.type == "meta":
                raise ValueError("precomputed text features are a meta tensor (no data)")
            feats = text.to(self.device, self.text_head.weight.dtype)
        elif isinstance(text, (Tensor, Mapping)):
            if isinstance(text, Tensor):
                text = self._check_tokens(text)
            feats = self._post(self.encoder.encode_text(text))
        elif isinstance(text, Sequence):
            if len(text) == 0:
                raise ValueError("empty caption list: expected one caption per image")
            for i, c in enumerate(text):
                if not isinstance(c, str):
                    raise TypeError(f"captions must be strings; item {i} is {type(c).__name__}")
            feats = self._encode_captions(list(text))
        else:
            raise TypeError(
                f"text must be a list of strings, token ids, or a feature tensor, got {type(text).__name__}"
            )
        if batch_size is not None and feats.shape[0] != batch_size:
            raise ValueError(f"got {feats.shape[0]} captions/text rows for {batch_size} images")
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"text features have dimension {feats.shape[-1]} but image features {self.feature_dim}: "
                "the surgery needs a joint embedding space"
            )
        return feats

    def _check_tokens(self, ids: Tensor) -> Tensor:
        """Token ids given by the caller: an integer ``(B, L)`` tensor of ids in the vocabulary
        (out-of-range ids would fail deep inside the embedding, on CUDA as a device assert)."""
        if ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor (B, L), got dtype {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"token ids must have shape (B, L), got {tuple(ids.shape)}")
        if ids.device.type == "meta":
            raise ValueError("token ids are a meta tensor (no data)")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            vocab = _vocab_size(self.encoder.model)
            if lo < 0 or (vocab is not None and hi >= vocab):
                raise ValueError(
                    f"token ids must lie in [0, {vocab if vocab is not None else 'vocab'}), got "
                    f"values in [{lo}, {hi}]"
                )
        return ids.to(self.device)

    def _encode_captions(self, captions: list[str]) -> Tensor:
        size = self.config.text_cache_size
        if size == 0:
            return self._post(self.encoder.encode_text(self.encoder.tokenize(captions)))
        cache = self._text_cache
        missing = list(dict.fromkeys(c for c in captions if c not in cache))
        if missing:
            feats = self._post(self.encoder.encode_text(self.encoder.tokenize(missing)))
            for c, f in zip(missing, feats):
                cache[c] = f.detach().clone()
        rows = []
        for c in captions:
            cache.move_to_end(c)
            rows.append(cache[c])
        while len(cache) > size:
            cache.popitem(last=False)
        return torch.stack(rows).to(self.device)

    def clear_caches(self) -> None:
        """Forget cached text features and teacher outputs (e.g. after changing the model)."""
        self._text_cache.clear()
        self._teacher_cache.clear()

    def clear_teacher_cache(self) -> None:
        """Forget cached teacher outputs (e.g. after changing the teacher head)."""
        self._teacher_cache.clear()

    # -- the step -----------------------------------------------------------------------------
    def _check_index(self, index: Any, batch: int) -> Tensor | None:
        if index is None:
            return None
        if not isinstance(index, Tensor):
            try:
                index = torch.as_tensor(index)
            except Exception as exc:
                raise TypeError(
                    f"index must be {batch} integer dataset indices, got {type(index).__name__}"
                ) from exc
        if (index.dim() != 1 or index.shape[0] != batch or index.is_floating_point()
                or index.is_complex() or index.dtype == torch.bool):
            raise ValueError(
                f"index must be {batch} non-negative integer dataset indices, got shape "
                f"{tuple(index.shape)} dtype {index.dtype}"
            )
        if index.device.type == "meta":
            raise ValueError("index is a meta tensor (no data)")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= _MAX_INDEX):
            raise ValueError(
                f"index must hold dataset positions in [0, {_MAX_INDEX}) (the teacher cache is "
                f"dense, sized by the largest index), got values in [{int(index.min())}, "
                f"{int(index.max())}]"
            )
        return index

    def _features(self, images: Tensor, need_teacher: bool) -> tuple[Tensor, Tensor | None]:
        """Student features (grad) and, if asked, teacher features (no grad), sharing the
        frozen trunk below the first adapted block when possible."""
        start = self._trunk_start
        enc = self.encoder
        if (need_teacher and start > 0 and self.config.shared_trunk and self._teacher_encoder is None):
            try:
                with torch.no_grad():
                    hidden, state = enc.encode_image_split(images, start)
            except NotImplementedError:
                pass
            else:
                with torch.no_grad(), adapters_disabled(enc.image_tower):
                    teacher = self._post(enc.encode_image_from(hidden, state, start, pooled_only=True))
                student = self._post(enc.encode_image_from(hidden, state, start))
                return student, teacher
        teacher = self.encode_teacher(images) if need_teacher else None
        return self.encode_student(images), teacher

    def forward(self, images: Tensor, text: Any, labels: Any, index: Any = None) -> DGSOutput:
        """One DGS training step's loss; call ``.backward()`` on ``out.loss``.

        ``index``: optional dataset indices of the images. Passing them declares that an
        index always maps to the same preprocessed image (deterministic transforms); the
        teacher's outputs are then cached per index and later epochs skip its forward.

        Bad input raises ``TypeError``/``ValueError`` naming what was expected; with
        ``config.nonfinite="raise"`` (default) so do NaN/Inf images or text features
        (``"ignore"`` lets the non-finite loss through for the trainer to handle).
        """
        cfg = self.config
        batch = self._check_images(images)
        y = self._check_labels(labels, batch)
        index = self._check_index(index, batch)
        check_finite = cfg.nonfinite == "raise"
        distill = cfg.feature_distill > 0
        if cfg.plain:
            if check_finite and not bool(self._inputs_finite(images)):
                self._raise_nonfinite_inputs(images)
            if not distill:
                logits = self.image_head(self.encode_student(images))
                loss = self._loss(logits, y)
                return DGSOutput(loss=loss, logits=logits, losses={"image": loss.detach()})
            # feature distillation alone: L_img + w * MSE(f, f_T)
            f, f_teacher = self._features(images, True)
            assert f_teacher is not None
            logits = self.image_head(f)
            loss_img = self._loss(logits, y)
            loss_fd = F.mse_loss(f, f_teacher.to(f.dtype))
            loss = loss_img + cfg.feature_distill * loss_fd
            return DGSOutput(loss=loss, logits=logits,
                             losses={"image": loss_img.detach(), "distill": loss_fd.detach()})

        t = self.encode_text(text, batch_size=batch)
        # read below together with the teacher reference's check: one device sync in all
        inputs_ok = self._inputs_finite(images, t) if check_finite else None
        kind = self._loss_kind
        closed = cfg.closed_form_heads and kind is not None
        # teacher: cached logits (closed form only needs those), or a forward without grad
        # (feature distillation needs the teacher's features, which the cache does not hold)
        z_teacher = None
        if cfg.alignment and closed and cfg.teacher_cache and index is not None and not distill:
            cached = self._teacher_cache.lookup(index)
            # a fresh host tensor of our own: the copy need not block (no device sync)
            z_teacher = cached.to(self.device, non_blocking=True) if cached is not None else None
        need_teacher = distill or (cfg.alignment and z_teacher is None)
        f, f_teacher = self._features(images, need_teacher)
        if f_teacher is not None and cfg.alignment:
            with torch.no_grad():
                z_teacher = self.teacher_head(f_teacher)
            if closed and cfg.teacher_cache and index is not None:
                self._teacher_cache.store(index, z_teacher)

        # text head: trains on detached text features; its input gradient is the harm reference
        z_text = self.text_head(t)
        loss_text = self._loss(z_text, y)
        # "invariant" scale: per-sample reference gradients (no 1/B), so that neither the
        # alignment weight nor the projection's eps depends on the (per-rank) batch size
        per_sample = cfg.align_scale == "invariant"
        g_text = input_grad(self.text_head, t, z_text, y, kind, self._loss, closed, per_sample)

        losses: dict[str, Tensor] = {"text": loss_text.detach()}
        stats = SurgeryStats()
        f_s = f
        if self.rule is not None:
            f_s = GradientSurgery.apply(f, self.rule, {"harm": g_text.to(f.dtype)}, stats, cfg.nonfinite)
        logits = self.image_head(f_s)
        loss_img = self._loss(logits, y)
        loss = loss_img + loss_text
        losses["image"] = loss_img.detach()

        if cfg.alignment:
            assert z_teacher is not None
            with torch.no_grad():
                losses["teacher"] = self._loss(z_teacher, y).detach()
            g_img = input_grad(self.teacher_head, f_teacher, z_teacher, y, kind, self._loss, closed,
                               per_sample)
            g_help = g_img.clamp_max(0).to(f.dtype)
            if cfg.nonfinite == "ignore":
                g_help = g_help.masked_fill(~torch.isfinite(g_help).all(-1, keepdim=True), 0.0)
            elif not bool(torch.isfinite(g_help).all() & inputs_ok):
                self._raise_nonfinite_inputs(images, t)  # the inputs, if they are the cause
                raise ValueError(
                    "the teacher's reference gradient contains NaN or Inf (check the teacher head "
                    "and the inputs), or set DGSConfig(nonfinite='ignore')"
                )
            else:
                inputs_ok = None  # checked
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

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Student logits only: the cost of the plain fine-tuned model. Runs in eval mode
        (no LoRA dropout), then restores the module's training flag."""
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
        """Stage 1: train ``teacher_head`` as a linear probe on frozen teacher features.

        ``loader`` yields batches ``(images, captions, labels[, index, ...])``, ``(images,
        labels)`` or mappings with keys ``images``, ``labels`` and optionally ``index``. With
        indices, the teacher features of the first epoch are kept (on the CPU) for the later
        epochs (``cache_features``), and the final head's logits fill the teacher cache that
        stage 2 reads. Returns the mean loss of each epoch."""
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        head = self.teacher_head
        head.requires_grad_(True)
        self._teacher_cache.clear()
        opt = torch.optim.Adam(head.parameters(), lr=lr, betas=betas)
        feature_cache = _IndexCache()
        history: list[float] = []
        seen: list[Tensor] = []
        try:
            for epoch in range(epochs):
                total, count = 0.0, 0
                batches = _progress(loader, progress, f"stage 1 epoch {epoch + 1}/{epochs}")
                for batch in batches:
                    images, labels, index = _unpack_stage1(batch)
                    n = self._check_images(images)
                    y = self._check_labels(labels, n)
                    index = self._check_index(index, n)
                    feats = feature_cache.lookup(index) if (cache_features and index is not None) else None
                    if feats is None:
                        feats = self.encode_teacher(images)
                        if cache_features and index is not None:
                            feature_cache.store(index, feats)
                    else:
                        feats = feats.to(self.device)
                    if epoch == 0 and index is not None:
                        seen.append(index.cpu())
                    loss = self._loss(head(feats), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * n
                    count += n
                if count == 0:
                    raise ValueError("fit_teacher_head: the loader yielded no batches")
                history.append(total / count)
        finally:
            head.requires_grad_(False)
        if seen and cache_features and self.config.teacher_cache and self._loss_kind is not None:
            idx = torch.unique(torch.cat(seen))
            with torch.no_grad():
                for chunk in idx.split(4096):
                    rows = feature_cache.lookup(chunk)
                    if rows is not None:
                        self._teacher_cache.store(chunk, head(rows.to(self.device)))
        return history

    # -- checkpoints --------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Tensor]:
        tensors = {n: p.detach() for n, p in self.named_trainable_parameters()}
        for n, p in self.teacher_head.named_parameters():
            tensors[f"teacher_head.{n}"] = p.detach()
        return tensors

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write LoRA weights and the three heads (safetensors) and the config (JSON),
        each atomically; the JSON, written last, records the weights' sha256."""
        directory = Path(directory)
        tensors = self._state_tensors()
        digest = save_tensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "dgsnet"})
        meta = {
            "format": "dgsnet",
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "model": self.encoder.describe(),
            "lora_modules": self.lora_modules,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "weights_sha256": digest,
        }
        atomic_write_json(directory / CONFIG_NAME, meta)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, model: Any, tokenizer: Any = None, loss_fn: LossFn | None = None
    ) -> DGSWrapper:
        """Rebuild a wrapper around a fresh ``model`` (the same architecture as when saved)
        and load the LoRA weights and heads. Mismatches raise :class:`CheckpointError`."""
        directory = Path(directory)
        meta = _read_meta(directory)
        try:
            config = DGSConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{directory / CONFIG_NAME} holds an invalid config: {exc}"
            ) from exc
        wrapper = cls(model, tokenizer, config, loss_fn=loss_fn)
        wrapper.load_checkpoint(directory, _meta=meta)
        return wrapper

    def load_checkpoint(self, directory: str | Path, _meta: dict[str, Any] | None = None) -> None:
        """Load weights written by :meth:`save_pretrained` into this wrapper (strict)."""
        directory = Path(directory)
        meta = _meta if _meta is not None else _read_meta(directory)
        saved_model, here = meta.get("model", {}), self.encoder.describe()
        for key in ("kind", "feature_dim", "num_blocks", "image_size"):
            a, b = saved_model.get(key), here.get(key)
            if a is not None and b is not None and _norm(a) != _norm(b):
                raise CheckpointError(
                    f"checkpoint {directory} was saved from a model with {key}={a}, but this model "
                    f"has {key}={b}"
                )
        tensors = load_tensors(directory / WEIGHTS_NAME, meta.get("weights_sha256"))
        own = dict(self.named_trainable_parameters())
        own.update({f"teacher_head.{n}": p for n, p in self.teacher_head.named_parameters()})
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {directory} does not fit this model: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        for name, param in own.items():
            value = tensors[name]
            if value.shape != param.shape:
                raise CheckpointError(
                    f"checkpoint tensor {name!r} has shape {tuple(value.shape)}, the model's "
                    f"parameter has shape {tuple(param.shape)}"
                )
            if not value.is_floating_point():
                raise CheckpointError(
                    f"checkpoint tensor {name!r} has dtype {value.dtype}, expected floating point"
                )
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(
                    f"checkpoint tensor {name!r} contains NaN or Inf: the run that saved it "
                    "diverged"
                )
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(tensors[name].to(param.dtype))
        self.clear_caches()


def _vocab_size(model: Any) -> int | None:
    """The text tower's vocabulary size (open_clip / OpenAI CLIP / Hugging Face), else None."""
    for owner in (model, getattr(model, "text", None)):
        emb = getattr(owner, "token_embedding", None)
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    size = getattr(getattr(getattr(model, "config", None), "text_config", None), "vocab_size", None)
    return size if isinstance(size, int) else None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} holds no {CONFIG_NAME}: not a dgsnet checkpoint")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): truncated or damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != "dgsnet" or "config" not in meta:
        raise CheckpointError(f"{path} is not a dgsnet checkpoint config")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if not isinstance(meta.get("model", {}), dict):
        raise CheckpointError(
            f"{path}: 'model' must be a JSON object, got {type(meta['model']).__name__}"
        )
    if not isinstance(meta.get("weights_sha256", ""), (str, type(None))):
        raise CheckpointError(
            f"{path}: 'weights_sha256' must be a hex string, got {meta['weights_sha256']!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta['format_version']}; this dgsnet reads up to {FORMAT_VERSION}"
        )
    return meta


def _unpack_stage1(batch: Any) -> tuple[Tensor, Any, Any]:
    if isinstance(batch, Mapping):
        images = batch.get("images", batch.get("image"))
        labels = batch.get("labels", batch.get("label"))
        if images is None or labels is None:
            raise ValueError(f"batch mapping needs 'images' and 'labels' keys, got {sorted(batch)}")
        return images, labels, batch.get("index", batch.get("indices"))
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) >= 3:
            index = batch[3] if len(batch) >= 4 and isinstance(batch[3], Tensor) else None
            return batch[0], batch[2], index
    raise ValueError(
        "expected batches (images, labels), (images, captions, labels[, index, ...]) or a mapping, "
        f"got {type(batch).__name__}"
    )


def _progress(it: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


