"""The compared methods, one fine-tuning recipe each, on identical data and budgets.

Every method starts from a fresh copy of the same prior, with the same LoRA (the reference
preset: q/k/v, rank 6, alpha 6, dropout 0.8; scaled alpha / r or alpha / sqrt(r) as the
run's ``lora_scaling`` says), the same seed (so the same LoRA and head
initialisation and the same batch order), the same optimiser, learning rate, batch size and
number of steps. Only the training signal differs:

==============  ===================================================================
``probe``       frozen prior + linear probe (UnivFD-style); this is also stage 1 of DGS
``lora``        plain LoRA: image-head BCE only
``lora_fd``     LoRA + global feature distillation: BCE + w * MSE(f_student, f_teacher)
``dgs``         DGS-Net, reference preset (suppression + alignment, lambda 0.2)
``dgs_no_os``   DGS without Orthogonal Suppression
``dgs_no_pa``   DGS without Prior Alignment
``dgs_inv``     DGS with the batch-size-invariant alignment scale (``align_scale=
                "invariant"``: lambda per sample instead of the released lambda / B)
``os_random``   control for Orthogonal Suppression: the same projection, but off the
                positive part of a random direction (a fresh Gaussian vector per step,
                a random sign per sample) instead of the text head's gradient; added
                after the first run (docs/study.md)
``dgs_fd``      DGS (reference preset) plus feature distillation with the weight of
                ``lora_fd``: ``DGSConfig(feature_distill=w)``, the term taken on the raw
                features so the projection does not act on its gradient; added with the
                grid (docs/study.md)
``sem``         per-image semantic suppression: plain LoRA whose feature gradient is
                projected, per image, off the image's own caption feature
                (``semantic.SemanticSuppression``); added with the strength axis
``sem_pos``     the same off the caption feature's positive part (DGS-Net's sign split
                applied to the per-image direction); added with the strength axis
``wise``        WiSE-FT: plain LoRA with its fine-tuned branch scaled by 0.5 at evaluation
                (weight-space interpolation halfway to the prior); added with the strength
                axis
==============  ===================================================================

``METHODS`` is what the single-family run and the grid run; ``EXTRA_METHODS`` came with the
shortcut-strength axis and run there (``STRENGTH_METHODS``), so the earlier runs' method sets,
and with them their timings, stay as published.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.surgery import GradientSurgery, OrthogonalSuppression, SurgeryStats

from . import prior as prior_mod
from .semantic import DirectionLog, SemanticSuppression
from .world import Split

METHODS = (
    "probe",
    "lora",
    "lora_fd",
    "dgs",
    "dgs_no_os",
    "dgs_no_pa",
    "dgs_inv",
    "os_random",
    "dgs_fd",
)
#: methods added with the shortcut-strength axis (not in the single-family run or the grid)
EXTRA_METHODS = ("sem", "sem_pos", "wise")
#: every method, in the order of the tables
ALL_METHODS = METHODS + EXTRA_METHODS
#: the methods of the shortcut-strength axis
STRENGTH_METHODS = ("probe", "lora", "lora_fd", "dgs", "dgs_no_pa", "sem", "sem_pos", "wise")
LABELS = {
    "probe": "Frozen prior + linear probe",
    "lora": "Plain LoRA",
    "lora_fd": "LoRA + feature distillation",
    "dgs": "DGS (reference preset)",
    "dgs_no_os": "DGS w/o suppression",
    "dgs_no_pa": "DGS w/o alignment",
    "dgs_inv": "DGS, invariant align scale",
    "os_random": "Control: projection off a random direction",
    "dgs_fd": "DGS + feature distillation",
    "sem": "Semantic suppression (own caption)",
    "sem_pos": "Semantic suppression, positive part",
    "wise": "WiSE-FT (LoRA branch x 0.5)",
}


@dataclass(frozen=True)
class Budget:
    """Training settings shared by every method (fixed by the protocol)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    probe_epochs: int = 20
    probe_lr: float = 1e-2
    fd_weight: float = 1.0


#: the LoRA scalings the study can run every LoRA method with: ``"standard"`` (alpha / r,
#: the first table of docs/study.md) or ``"rslora"`` (alpha / sqrt(r), the released code's)
LORA_SCALINGS = ("standard", "rslora")
DEFAULT_SCALING = "standard"


def reference_config(lora_scaling: str = DEFAULT_SCALING, **overrides) -> DGSConfig:
    """``DGSConfig.reference(**overrides)`` with the LoRA scaling ``lora_scaling``."""
    if lora_scaling not in LORA_SCALINGS:
        raise ValueError(f"lora_scaling must be one of {LORA_SCALINGS}, got {lora_scaling!r}")
    return DGSConfig.reference(lora_scaling=lora_scaling, **overrides)


def _config(method: str, lora_scaling: str = DEFAULT_SCALING, fd_weight: float = 1.0) -> DGSConfig:
    if method in ("lora", "lora_fd", "os_random", "sem", "sem_pos"):
        return reference_config(lora_scaling, suppression=False, alignment=False)
    if method == "dgs":
        return reference_config(lora_scaling)
    if method == "dgs_no_os":
        return reference_config(lora_scaling, suppression=False)
    if method == "dgs_no_pa":
        return reference_config(lora_scaling, alignment=False)
    if method == "dgs_inv":
        return reference_config(lora_scaling, align_scale="invariant")
    if method == "dgs_fd":
        return reference_config(lora_scaling, feature_distill=fd_weight)
    raise ValueError(f"unknown method {method!r}; expected one of {ALL_METHODS}")


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


class Trained:
    """A trained detector: ``score(images)`` (probabilities) and ``features(images)``."""

    def __init__(
        self, dgs: DGSWrapper, frozen: bool, surgery: dict[str, float] | None = None
    ) -> None:
        self.dgs, self.frozen = dgs, frozen
        #: for methods with a projection: its mean ``removed_fraction`` and ``cos_harm`` over
        #: the training steps (see :class:`dgsnet.surgery.SurgeryStats`)
        self.surgery = surgery

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features the detector's head reads: the teacher's for the frozen probe, else the
        student's (eval mode)."""
        self.dgs.eval()
        return _in_chunks(
            self.dgs.encode_teacher if self.frozen else self.dgs.encode_student, images
        )

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        head = self.dgs.teacher_head if self.frozen else self.dgs.image_head
        return torch.sigmoid(head(self.features(images))).flatten()

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        self.dgs.eval()
        return _in_chunks(self.dgs.encode_teacher, images)


def _in_chunks(
    encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """``encode`` over pixel images in [0, 1], 256 at a time."""
    return torch.cat([encode(c) for c in prior_mod.to_input(images).split(256)])


def fit_probe(
    prior: torch.nn.Module,
    train: Split,
    budget: Budget,
    seed: int,
    lora_scaling: str = DEFAULT_SCALING,
) -> dict[str, torch.Tensor]:
    """Stage 1 / the UnivFD-style baseline: the teacher head as a linear probe on frozen
    prior features. Returns the head's state."""
    torch.manual_seed(seed)
    dgs = DGSWrapper(copy.deepcopy(prior), prior_mod.tokenizer(), reference_config(lora_scaling))
    gen = torch.Generator().manual_seed(seed)
    x = prior_mod.to_input(train.images)

    def loader():
        for idx in _batches(len(train), budget.batch_size, gen):
            yield {"images": x[idx], "labels": train.labels[idx], "index": idx}

    class Epochs:  # a re-iterable loader (fit_teacher_head iterates once per epoch)
        def __iter__(self):
            return loader()

    dgs.fit_teacher_head(Epochs(), epochs=budget.probe_epochs, lr=budget.probe_lr)
    return {k: v.detach().clone() for k, v in dgs.teacher_head.state_dict().items()}


def train_method(
    method: str,
    prior: torch.nn.Module,
    train: Split,
    probe_head: dict[str, torch.Tensor],
    budget: Budget,
    seed: int,
    lora_scaling: str = DEFAULT_SCALING,
    base: Trained | None = None,
) -> Trained:
    """Fine-tune a fresh copy of ``prior`` with ``method`` on ``train`` (every LoRA scaled as
    ``lora_scaling`` says). ``"wise"`` is plain LoRA with its branch halved at evaluation:
    pass the plain-LoRA detector of the same seed as ``base`` to reuse it (else it is
    trained here, to the same parameters)."""
    if method == "probe":
        dgs = DGSWrapper(
            copy.deepcopy(prior), prior_mod.tokenizer(), reference_config(lora_scaling)
        )
        dgs.teacher_head.load_state_dict(probe_head)
        return Trained(dgs, frozen=True)
    if method == "wise":
        if base is None:
            base = train_method("lora", prior, train, probe_head, budget, seed, lora_scaling)
        return wise_ft(base, WISE_ALPHA)
    torch.manual_seed(seed)
    config = _config(method, lora_scaling, budget.fd_weight)
    dgs = DGSWrapper(copy.deepcopy(prior), prior_mod.tokenizer(), config)
    dgs.teacher_head.load_state_dict(probe_head)
    step = _Step(method, dgs, train, budget, seed)
    opt = torch.optim.Adam(list(dgs.trainable_parameters()), lr=budget.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    surgery_log: list[dict[str, float]] = []
    directions = DirectionLog()
    dgs.train()
    for _ in range(budget.epochs):
        for idx in _batches(len(train), budget.batch_size, gen):
            loss, stats = step.loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step.projects:
                surgery_log.append(stats.summary())
                step.record(directions, idx, stats)
            opt.step()
    dgs.eval()
    surgery = None
    if surgery_log:
        # cos_harm: the cosine between the incoming gradient and the reference projected off
        # (its positive part for "harm"; the whole caption feature for "sem" and "sem_pos")
        keys = {"removed_fraction": "removed_fraction", "cos_harm": step.cos_key}
        surgery = {
            k: sum(d[src] for d in surgery_log) / len(surgery_log) for k, src in keys.items()
        }
        surgery.update({f"dir_{k}": v for k, v in directions.summary().items()})
    return Trained(dgs, frozen=False, surgery=surgery)


class _Step:
    """One method's training loss on a batch, and what its projection removed."""

    def __init__(
        self, method: str, dgs: DGSWrapper, train: Split, budget: Budget, seed: int
    ) -> None:
        self.method, self.dgs, self.train, self.budget = method, dgs, train, budget
        self.x = prior_mod.to_input(train.images)
        self.f_teacher = None
        if method == "lora_fd":
            self.f_teacher = _in_chunks(dgs.encode_teacher, train.images)
        # the control's random directions come from a generator of their own, so the batch
        # order stays the one every other method sees
        self.control_gen = torch.Generator().manual_seed(10_000 + seed)
        self.control_rule = OrthogonalSuppression(eps=dgs.config.eps)
        self.semantic = method in ("sem", "sem_pos")
        self.semantic_rule = SemanticSuppression(part="positive" if method == "sem_pos" else "full")
        self.projects = method == "os_random" or self.semantic or dgs.config.suppression
        self.cos_key = "cos_text" if self.semantic else "cos_harm"

    def _captions(self, idx: torch.Tensor) -> list[str]:
        return [self.train.captions[i] for i in idx.tolist()]

    def _bce(self, f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = self.dgs.image_head(f).flatten()
        return F.binary_cross_entropy_with_logits(logits, self.train.labels[idx].float())

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, SurgeryStats]:
        """The loss of the batch ``idx`` and the projection's statistics (filled in
        backward)."""
        dgs, method = self.dgs, self.method
        if method == "os_random":
            f = dgs.encode_student(self.x[idx])
            u = torch.randn(f.shape[1], generator=self.control_gen)
            sign = torch.randint(0, 2, (len(idx), 1), generator=self.control_gen) * 2 - 1
            stats = SurgeryStats()
            f = GradientSurgery.apply(f, self.control_rule, {"harm": sign * u}, stats)
            return self._bce(f, idx), stats
        if self.semantic:
            # plain LoRA whose feature gradient is projected, per image, off the image's own
            # caption feature (the public API: encoder, text features, GradientSurgery)
            f = dgs.encode_student(self.x[idx])
            t = dgs.encode_text(self._captions(idx))
            stats = SurgeryStats()
            f = GradientSurgery.apply(f, self.semantic_rule, {"text": t.to(f.dtype)}, stats)
            return self._bce(f, idx), stats
        if method == "lora_fd":
            assert self.f_teacher is not None
            f = dgs.encode_student(self.x[idx])
            loss = self._bce(f, idx)
            return loss + self.budget.fd_weight * F.mse_loss(f, self.f_teacher[idx]), SurgeryStats()
        out = dgs(self.x[idx], self._captions(idx), self.train.labels[idx], index=idx)
        return out.loss, out.surgery

    @torch.no_grad()
    def record(self, log: DirectionLog, idx: torch.Tensor, stats: SurgeryStats) -> None:
        """After backward: the direction projected off each sample, the incoming gradient and
        the image's own caption feature (read from the wrapper's text cache: no randomness,
        no effect on training)."""
        if stats.grad_in is None:
            return
        if self.semantic:
            text = stats.refs["text"]
            direction = self.semantic_rule.direction(text)
        else:
            text = self.dgs.encode_text(self._captions(idx))
            direction = stats.refs["harm"].clamp_min(0)
        log.add(direction, self.train.labels[idx], stats.grad_in, text)


#: WiSE-FT's interpolation: the fine-tuned LoRA branch scaled by this at evaluation time
WISE_ALPHA = 0.5


def wise_ft(trained: Trained, alpha: float = WISE_ALPHA) -> Trained:
    """Weight-space interpolation (WiSE-FT, Wortsman et al., 2022) of a LoRA detector with its
    prior: a copy whose every LoRA ``B`` matrix is scaled by ``alpha``, so each adapted weight
    is ``W0 + alpha * s * B A`` (``alpha = 0`` is the prior, ``1`` the fine-tuned model); the
    fine-tuned image head is kept. Multiplying by 0.5 is exact in floating point."""
    if trained.frozen:
        raise ValueError("wise_ft needs a fine-tuned LoRA detector, got the frozen probe")
    dgs = copy.deepcopy(trained.dgs)
    scaled = 0
    with torch.no_grad():
        for name, p in dgs.named_trainable_parameters():
            if "lora_B" in name:
                p.mul_(alpha)
                scaled += 1
    if not scaled:
        raise ValueError("wise_ft found no LoRA B matrix to scale (no 'lora_B' parameter)")
    dgs.eval()
    return Trained(dgs, frozen=False)


def text_only_classifier(
    prior: torch.nn.Module, train: Split, tests: dict[str, Split], seed: int, steps: int = 300
) -> dict[str, float]:
    """The analogue of the paper's caption-only classifier: a logistic regression on frozen
    text features of the captions, trained on the training captions; accuracy on each split
    in ``tests``."""
    torch.manual_seed(seed)
    tok = prior_mod.tokenizer()

    @torch.no_grad()
    def feats(captions: list[str]) -> torch.Tensor:
        return torch.cat(
            [prior.encode_text(tok(captions[i : i + 512])) for i in range(0, len(captions), 512)]
        )

    t = feats(train.captions)
    mu, sd = t.mean(0), t.std(0) + 1e-6
    head = torch.nn.Linear(t.shape[1], 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(
            head((t - mu) / sd).flatten(), train.labels.float()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {}
    with torch.no_grad():
        for name, split in tests.items():
            pred = head((feats(split.captions) - mu) / sd).flatten() > 0
            out[name] = float((pred.long() == split.labels).float().mean())
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) between two feature matrices of the same inputs."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    return float(num / den)
