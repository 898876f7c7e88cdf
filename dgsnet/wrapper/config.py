"""`DGSConfig`: every knob of DGS fine-tuning, validated, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["DGSConfig"]

Order = Literal["align_then_project", "project_then_align"]
AlignScale = Literal["reference", "invariant"]
LoRAScaling = Literal["standard", "rslora"]

#: keys that earlier dgsnet versions wrote and this one dropped: `{key: value that carries no
#: information}`. Such a key with that value loads silently; any other value warns.
_RETIRED_KEYS: dict[str, Any] = {"extra": {}}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class DGSConfig:
    """Configuration of `DGSWrapper`: every setting of DGS fine-tuning, validated.

    The surgery defaults reproduce the released DGS-Net training code's gradients (see
    `docs/config.md`): alignment weight 0.2 with its `lambda/B` scaling, alignment added
    *before* the projection, `eps=1e-6`, LoRA rank 6 / alpha 6 / dropout 0.8. Two LoRA
    settings default to the common convention instead and `reference` switches them to
    the released code's: the targets (default: the encoder's own, open_clip q/k/v and the MLP,
    Hugging Face q/k/v; released: q/k/v only) and the scaling (default `"standard"`,
    `alpha / r`; released `"rslora"`, `alpha / sqrt(r)`).

    The config is immutable: a wrapper reads it at construction and during every step, so a
    field changed afterwards could take effect in one place and not in another. Make a
    changed copy with `dataclasses.replace(config, align_weight=0.5)` (validated like a new
    config) and build a new wrapper with it.

    Examples:
        >>> import dataclasses
        >>> cfg = DGSConfig.reference()
        >>> cfg.lora_scaling, cfg.lora_targets
        ('rslora', ('q_proj', 'k_proj', 'v_proj'))
        >>> dataclasses.replace(cfg, align_weight=0.5).align_weight
        0.5
    """

    num_classes: int = 1
    """Logits per head. `1`: binary detection (0 = real, 1 = fake) with one logit and BCE;
    `C >= 2`: `C` classes with cross-entropy (two-logit detectors use `2`)."""
    loss: Literal["auto", "bce", "ce"] = "auto"
    """The heads' loss: `"bce"` (one logit), `"ce"` (cross-entropy), or `"auto"`, which picks
    BCE for `num_classes == 1` and cross-entropy otherwise."""
    # LoRA
    lora_rank: int = 6
    """The rank `r` of every LoRA branch (the released code: 6)."""
    lora_alpha: float = 6.0
    """LoRA's `alpha`; the branch is scaled by `alpha / r` or `alpha / sqrt(r)` (see
    `lora_scaling`). The released code: 6."""
    lora_dropout: float = 0.8
    """Dropout on the LoRA branch's input, in training mode only (the released code: 0.8)."""
    lora_targets: tuple[str, ...] | None = None
    """Leaf names of the image tower's linear layers that get LoRA (e.g.
    `("q_proj", "k_proj", "v_proj")`); `None`: the encoder's defaults (open_clip q/k/v and
    the MLP, Hugging Face q/k/v). A list is accepted and stored as a tuple."""
    lora_layers: tuple[int, ...] | None = None
    """Indices of the image blocks that get LoRA (negative ones count from the end);
    `None`: every block. A list is accepted and stored as a tuple."""
    lora_scaling: LoRAScaling = "standard"
    """The factor of the LoRA branch: `"standard"` is `alpha / r` (peft's and loralib's
    default), `"rslora"` is `alpha / sqrt(r)` (rank-stabilised LoRA, the layers of the public
    CLIP-LoRA code that the released DGS-Net uses). With `r = alpha = 6` the branch is `1`
    resp. `sqrt(6) = 2.449` times `B A x`."""
    # surgery
    suppression: bool = True
    """Orthogonal Suppression: project the student's feature gradient off the normalised
    positive part of the text head's input gradient. `False` (the ablation) needs no
    captions and runs no text forward."""
    alignment: bool = True
    """Prior Alignment: add the negative part of the frozen teacher head's input gradient
    (through the loss term `align_weight * mean_b <f_b, g_help_b>`)."""
    align_weight: float = 0.2
    """`lambda`, the weight of the alignment term (the released code: 0.2)."""
    align_scale: AlignScale = "reference"
    """`"reference"`: the references are gradients of mean-reduced losses, so the alignment
    acts with weight `lambda / B` (as in the released code); `"invariant"`: per-sample
    gradients, which makes the step independent of the batch size."""
    order: Order = "align_then_project"
    """`"align_then_project"`: the projection acts on the image loss's gradient plus the
    alignment's (the released code); `"project_then_align"`: project the image loss's
    gradient, then add the alignment (the paper's prose)."""
    eps: float = 1e-6
    """Added to the norm of the harmful direction before dividing (the released code: 1e-6),
    so that a zero reference gives no projection instead of NaN."""
    conflict_only: bool = False
    """Project only the samples whose gradient points into the harmful direction
    (`<g, u> > 0`); the released code projects both signs."""
    nonfinite: Literal["raise", "ignore"] = "raise"
    """NaN/Inf in the inputs or the reference gradients: `"raise"` a `NonFiniteInputError`
    naming the samples, or `"ignore"` (no surgery for those samples; the trainer then
    handles the non-finite loss)."""
    fused: bool = False
    """Run the surgery through `torch.compile` (the same math; falls back to eager with a
    warning where compilation fails)."""
    # feature distillation (the paper's "global feature distillation"; alone or with the surgery)
    feature_distill: float = 0.0
    """Weight `w` of a feature-distillation term `w * MSE(f, f_T)` between the student's
    and the frozen teacher's image features, mean over the batch and the feature dimension
    (`torch.nn.functional.mse_loss`'s default). It is taken on the raw student features, so
    its gradient `2 w (f - f_T) / (B D)` reaches the encoder without passing through the
    Orthogonal Suppression projection. `0` (default): off. With
    `suppression=False, alignment=False` it is the paper's "global feature distillation"
    ablation: `L_img + w * MSE`."""
    # model plumbing
    teacher: Literal["shared", "copy"] = "shared"
    """Where the frozen teacher's features come from: `"shared"` runs the same weights with
    the LoRA adapters off (no copy); `"copy"` keeps a deep copy of the encoder, as the
    released code does."""
    normalize_features: bool = False
    """L2-normalise the image and text features before the heads (the released code does
    not)."""
    # caches and shortcuts (each exact; see docs/performance.md)
    text_cache_size: int = 65536
    """How many captions' text features the wrapper keeps (least recently used first out);
    `0` disables the cache. Exact: a cached feature is the one the frozen text tower gave."""
    teacher_cache: bool = True
    """Keep the teacher's logits per dataset index when the step receives `index=`, so later
    epochs skip the teacher's forward (exact while an index always maps to the same
    preprocessed image)."""
    shared_trunk: bool = True
    """Let the teacher reuse the student's activations below the first adapted block (the
    frozen blocks are identical for both); exact."""
    closed_form_heads: bool = True
    """Take the reference gradients of linear heads with a built-in loss in closed form
    instead of by autograd; exact up to float rounding."""

    def __post_init__(self) -> None:
        self._check_heads_and_lora()
        self._check_switches_and_step()

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"DGSConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

    def _check_heads_and_lora(self) -> None:
        fail, is_int, is_num = self._fail, _is_int, _is_num
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
                object.__setattr__(self, name, tuple(value))  # frozen: set once, here
        if self.lora_scaling not in ("standard", "rslora"):
            fail(
                "lora_scaling",
                "'standard' (alpha / r) or 'rslora' (alpha / sqrt(r), the released code)",
            )
        if self.lora_targets is not None and (
            not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets)
        ):
            fail("lora_targets", "a non-empty list of module names")
        if self.lora_layers is not None and (
            not self.lora_layers or not all(is_int(i) for i in self.lora_layers)
        ):
            fail("lora_layers", "a non-empty list of block indices (ints)")

    def _check_switches_and_step(self) -> None:
        fail, is_num = self._fail, _is_num
        for name in (
            "suppression",
            "alignment",
            "conflict_only",
            "fused",
            "normalize_features",
            "teacher_cache",
            "shared_trunk",
            "closed_form_heads",
        ):
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
        if not _is_int(self.text_cache_size) or self.text_cache_size < 0:
            fail("text_cache_size", "an int >= 0 (0 disables the cache)")
        if not is_num(self.feature_distill) or self.feature_distill < 0:
            fail("feature_distill", "a finite number >= 0 (0: off)")

    # -- derived ------------------------------------------------------------------------------
    @property
    def loss_kind(self) -> Literal["bce", "ce"]:
        """The loss `loss="auto"` resolves to: `"bce"` for one logit, else `"ce"`."""
        if self.loss != "auto":
            return self.loss
        return "bce" if self.num_classes == 1 else "ce"

    @property
    def plain(self) -> bool:
        """True when both DGS components are off: a LoRA fine-tuning step on the image loss
        (plus the feature-distillation term if `feature_distill > 0`), with no text."""
        return not (self.suppression or self.alignment)

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def reference(cls, **overrides: Any) -> DGSConfig:
        """The released code's setup: LoRA r=6, alpha=6, dropout 0.8 on q/k/v of every block,
        scaled by alpha / sqrt(r) (`lora_scaling="rslora"`); alignment 0.2 with lambda/B
        scaling, added before the projection.

        Args:
            **overrides: DGSConfig fields to set on top of the released values.

        Returns:
            The config.
        """
        base: dict[str, Any] = {
            "lora_targets": ["q_proj", "k_proj", "v_proj"],
            "lora_scaling": "rslora",
        }
        base.update(overrides)
        return cls(**base)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict (the input of `from_dict`); tuples as lists."""
        out = dataclasses.asdict(self)
        for name in ("lora_targets", "lora_layers"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON (sorted keys), written atomically to `path` if given.

        Args:
            path: where to write the JSON as well, or `None`.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from ..io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DGSConfig:
        """A config from `to_dict`'s output, e.g. a checkpoint's JSON.

        Missing fields take their defaults; a file written before `lora_scaling` existed
        therefore loads as `"standard"` (`alpha / r`), the only scaling dgsnet had then.
        Unknown keys warn and are ignored; the retired `extra` key (always an empty dict,
        nothing read it) is dropped silently.

        Args:
            data: the dict.

        Returns:
            The config.

        Raises:
            TypeError: `data` is not a dict.
            ValueError: a field holds an invalid value.
        """
        if not isinstance(data, dict):
            raise TypeError(f"DGSConfig.from_dict expects a dict, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if not (k in _RETIRED_KEYS and v == _RETIRED_KEYS[k])}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            warnings.warn(
                f"DGSConfig: ignoring unknown key(s) {unknown} (written by another dgsnet "
                "version?)",
                UserWarning,
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DGSConfig:
        """A config from JSON text or a JSON file (see `from_dict`).

        Args:
            text_or_path: JSON text (starting with `{`), or the path of a JSON file.

        Returns:
            The config.

        Raises:
            ValueError: not valid JSON, or a field holds an invalid value.
            TypeError: the JSON is not an object.
        """
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"DGSConfig: not valid JSON ({exc})") from exc
        return cls.from_dict(data)
