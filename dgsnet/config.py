"""``DGSConfig``: every knob of DGS fine-tuning, validated, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["DGSConfig"]

Order = Literal["align_then_project", "project_then_align"]
AlignScale = Literal["reference", "invariant"]


@dataclass
class DGSConfig:
    """Configuration of :class:`~dgsnet.DGSWrapper`.

    The defaults reproduce the released DGS-Net training code's gradients (see
    ``docs/config.md``): alignment weight 0.2 with its ``lambda/B`` scaling, alignment added
    *before* the projection, ``eps=1e-6``, LoRA rank 6 / alpha 6 / dropout 0.8. LoRA targets
    default to the encoder's own (open_clip: q/k/v and the MLP; Hugging Face: q/k/v); the
    reference adapted q/k/v only, see :meth:`reference`.
    """

    num_classes: int = 1
    loss: Literal["auto", "bce", "ce"] = "auto"
    # LoRA
    lora_rank: int = 6
    lora_alpha: float = 6.0
    lora_dropout: float = 0.8
    lora_targets: list[str] | None = None
    lora_layers: list[int] | None = None
    # surgery
    suppression: bool = True
    alignment: bool = True
    align_weight: float = 0.2
    align_scale: AlignScale = "reference"
    order: Order = "align_then_project"
    eps: float = 1e-6
    conflict_only: bool = False
    nonfinite: Literal["raise", "ignore"] = "raise"
    fused: bool = False
    # model plumbing
    teacher: Literal["shared", "copy"] = "shared"
    normalize_features: bool = False
    # caches and shortcuts (each exact; see docs/performance.md)
    text_cache_size: int = 65536
    teacher_cache: bool = True
    shared_trunk: bool = True
    closed_form_heads: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"DGSConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.num_classes) or self.num_classes < 1:
            fail("num_classes", "an int >= 1 (1: binary detection with BCE)")
        if self.loss not in ("auto", "bce", "ce"):
            fail("loss", "'auto', 'bce' or 'ce'")
        if self.loss == "bce" and self.num_classes != 1:
            fail("loss", "'ce' or 'auto' when num_classes > 1 (BCE uses one logit)")
        if self.loss == "ce" and self.num_classes < 2:
            fail("loss", "'bce' or 'auto' when num_classes == 1")
        if not is_int(self.lora_rank) or self.lora_rank < 1:
            fail("lora_rank", "an int >= 1")
        if not is_num(self.lora_alpha) or self.lora_alpha <= 0:
            fail("lora_alpha", "a finite number > 0")
        if not is_num(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "a number in [0, 1)")
        for name in ("lora_targets", "lora_layers"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                    fail(name, "a list or None")
                setattr(self, name, list(value))
        if self.lora_targets is not None and (
            not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets)
        ):
            fail("lora_targets", "a non-empty list of module names")
        if self.lora_layers is not None and (
            not self.lora_layers or not all(is_int(i) for i in self.lora_layers)
        ):
            fail("lora_layers", "a non-empty list of block indices (ints)")
        for name in ("suppression", "alignment", "conflict_only", "fused", "normalize_features",
                     "teacher_cache", "shared_trunk", "closed_form_heads"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool")
        if not is_num(self.align_weight) or self.align_weight < 0:
            fail("align_weight", "a finite number >= 0")
        if self.align_scale not in ("reference", "invariant"):
            fail("align_scale", "'reference' or 'invariant'")
        if self.order not in ("align_then_project", "project_then_align"):
            fail("order", "'align_then_project' (reference code) or 'project_then_align' (paper)")
        if not is_num(self.eps) or self.eps < 0:
            fail("eps", "a finite number >= 0")
        if self.nonfinite not in ("raise", "ignore"):
            fail("nonfinite", "'raise' or 'ignore'")
        if self.teacher not in ("shared", "copy"):
            fail("teacher", "'shared' (adapters off, no copy) or 'copy'")
        if not is_int(self.text_cache_size) or self.text_cache_size < 0:
            fail("text_cache_size", "an int >= 0 (0 disables the cache)")
        if not isinstance(self.extra, dict):
            fail("extra", "a dict")

    # -- derived ------------------------------------------------------------------------------
    @property
    def loss_kind(self) -> Literal["bce", "ce"]:
        if self.loss != "auto":
            return self.loss
        return "bce" if self.num_classes == 1 else "ce"

    @property
    def plain(self) -> bool:
        """True when both DGS components are off: a plain LoRA fine-tuning step."""
        return not (self.suppression or self.alignment)

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def reference(cls, **overrides: Any) -> DGSConfig:
        """The released code's setup: LoRA r=6, alpha=6, dropout 0.8 on q/k/v of every block;
        alignment 0.2 with lambda/B scaling, added before the projection."""
        base: dict[str, Any] = {"lora_targets": ["q_proj", "k_proj", "v_proj"]}
        base.update(overrides)
        return cls(**base)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from .io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DGSConfig:
        if not isinstance(data, dict):
            raise TypeError(f"DGSConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            warnings.warn(
                f"DGSConfig: ignoring unknown key(s) {unknown} (written by another dgsnet version?)",
                UserWarning,
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DGSConfig:
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"DGSConfig: not valid JSON ({exc})") from exc
        return cls.from_dict(data)
