r"""The training engine behind ``dgsnet train`` / ``dgsnet eval``, usable from Python too.

Pieces (see ``docs/cli.md`` for the command line on top of them):

* :func:`build_model`: a model spec (``tiny``, an open_clip name with its weights such as
  ``ViT-L-14@openai``, or ``hf:<path>`` for a Hugging Face CLIP) -> :class:`ModelBundle`
  ``(model, tokenizer, train_transform, eval_transform)``.
* :func:`train`: stage 1 (the teacher head as a linear probe on frozen features, through
  :meth:`DGSWrapper.fit_teacher_head`) then stage 2 (LoRA + image/text heads with the gradient
  surgery; Adam, lr ``x0.9`` every 10 epochs as in the reference code), or either alone.
  Per-step JSONL log, tqdm bar, resumable checkpoints (safetensors + JSON, never pickle),
  non-finite loss/gradient detection, ``torchrun`` data parallelism.
* :func:`evaluate`: one :class:`~dgsnet.metrics.MetricsTable` per test root (one row per
  subset), optionally on JPEG-compressed / blurred / resized images.

Reproducibility. Every source of randomness in :func:`train` is a pure function of the seed
and the position in the run, so an interrupted run resumed from its checkpoint finishes with
exactly the weights of an uninterrupted one:

* the sampler's permutation of epoch ``e`` is drawn from a generator seeded with
  ``(seed, e)``; the checkpoint stores the epoch and the number of batches done in it;
* the random part of the training transform (flip, patch shuffle) of item ``i`` in epoch
  ``e`` runs under torch's RNG seeded with ``(seed, e, i)`` (whatever the worker or rank);
* before stage-2 step ``k`` torch's RNG (LoRA dropout) is seeded with ``(seed, rank, k)``;
* the optimizer state, the learning-rate schedule and the RNG states are saved as well.

With ``deterministic=True`` :func:`train` also switches on
``torch.use_deterministic_algorithms`` for its duration (bitwise repeatable CPU runs).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .io import (
    CheckpointError,
    atomic_write_json,
    fsync_dir,
    json_safe,
    load_tensors,
    save_tensors,
    sha256_file,
)
from .metrics import MetricsTable
from .wrapper import CONFIG_NAME, WEIGHTS_NAME, DGSWrapper

__all__ = [
    "LAST_DIR",
    "FINAL_DIR",
    "LOG_NAME",
    "MODEL_INFO_NAME",
    "STATE_NAME",
    "OPTIMIZER_NAME",
    "ModelSpec",
    "ModelBundle",
    "ModelLoadError",
    "TrainingConfigError",
    "NonFiniteError",
    "TrainingInterrupted",
    "TrainState",
    "TrainResult",
    "DistInfo",
    "ResumableSampler",
    "TrainItems",
    "build_model",
    "open_datasets",
    "train",
    "evaluate",
    "predict_scores",
    "load_trained",
    "resolve_checkpoint",
    "find_resume_checkpoint",
    "setup_distributed",
    "dataset_fingerprint",
    "seed_everything",
]

#: sub-folders and files of a training output directory
LAST_DIR = "last"
FINAL_DIR = "final"
LOG_NAME = "train_log.jsonl"
RUN_NAME = "run.json"
SUMMARY_NAME = "summary.json"
MODEL_INFO_NAME = "dgsnet_model.json"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
TEACHER_CACHE_NAME = "teacher_cache.safetensors"
STATE_FORMAT = "dgsnet.trainer_state"
STATE_VERSION = 1


from .errors import (  # noqa: E402  (re-exported: dgsnet.training's public names)
    ModelLoadError,
    NonFiniteError,
    TrainingConfigError,
    TrainingInterrupted,
)


# ============================================================================================
# seeds
# ============================================================================================


def _derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The global RNG states as JSON-ready values (base64 / lists; never pickle)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": base64.b64encode(np.asarray(np_state[1], dtype=np.uint32).tobytes()).decode(
                "ascii"
            ),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode("ascii")
            for s in torch.cuda.get_rng_state_all()
        ]
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    try:
        raw = base64.b64decode(state["torch"])
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        npy = state["numpy"]
        keys = np.frombuffer(base64.b64decode(npy["keys"]), dtype=np.uint32).copy()
        np.random.set_state(
            (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(
                [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in cuda]
            )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's RNG states cannot be restored: {exc}") from exc


# ============================================================================================
# models
# ============================================================================================

_TINY_DEFAULT_SIZE = 32


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to build. Parsed from a string by :meth:`parse`:

    * ``tiny`` / ``tiny:<size>``: a tiny randomly initialised open_clip ViT (always the same
      weights: seed 0), image size 32 by default (a multiple of 8), for trying the pipeline;
    * ``<open_clip name>@<pretrained>`` (or the name with ``pretrained=``), e.g.
      ``ViT-L-14@openai``: ``open_clip.create_model_and_transforms(name, pretrained=...)``;
      ``pretrained`` is a tag or a local weights file; the weights must be in the local cache
      or on disk when there is no network;
    * ``hf:<path or hub id>``: a Hugging Face CLIP/SigLIP (``AutoModel``, ``AutoTokenizer``,
      ``AutoImageProcessor``).
    """

    kind: str
    name: str
    pretrained: str | None = None
    image_size: int | None = None

    @classmethod
    def parse(cls, spec: str | ModelSpec, pretrained: str | None = None) -> ModelSpec:
        if isinstance(spec, ModelSpec):
            if pretrained is not None and spec.kind == "open_clip":
                return cls("open_clip", spec.name, pretrained)
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ModelLoadError(f"model spec must be a non-empty string, got {spec!r}")
        s = spec.strip()
        if s == "tiny" or s.startswith("tiny:"):
            size = _TINY_DEFAULT_SIZE
            if s.startswith("tiny:"):
                try:
                    size = int(s.split(":", 1)[1])
                except ValueError:
                    raise ModelLoadError(
                        f"model spec {s!r}: expected tiny:<image size>, e.g. tiny:64"
                    ) from None
            if size < 16 or size % 8:
                raise ModelLoadError(
                    f"model spec {s!r}: the tiny model's image size must be a multiple of 8, >= 16"
                )
            if pretrained is not None:
                raise ModelLoadError(
                    "the tiny model is randomly initialised; it takes no pretrained weights"
                )
            return cls("tiny", "tiny", None, size)
        if s.startswith("hf:"):
            path = s[3:]
            if not path:
                raise ModelLoadError(
                    "model spec 'hf:' needs a path or hub id, e.g. hf:openai/clip-vit-large-patch14"
                )
            if os.path.exists(path):
                path = os.path.abspath(path)
            return cls("hf", path, None)
        if s.startswith("open_clip:"):
            s = s[len("open_clip:") :]
        name, _, tag = s.partition("@")
        tag = tag or None
        if pretrained is not None:
            if tag is not None and tag != pretrained:
                raise ModelLoadError(
                    f"model spec {spec!r} names weights {tag!r} but pretrained={pretrained!r}"
                )
            tag = pretrained
        if tag is None:
            raise ModelLoadError(
                f"model spec {spec!r}: say which weights to load, e.g. {name}@openai (a tag or a "
                "local file); a randomly initialised CLIP cannot be rebuilt for evaluation"
            )
        if os.path.exists(tag):
            tag = os.path.abspath(tag)
        return cls("open_clip", name, tag)

    def __str__(self) -> str:
        if self.kind == "tiny":
            return f"tiny:{self.image_size}"
        if self.kind == "hf":
            return f"hf:{self.name}"
        return f"{self.name}@{self.pretrained}"


def _resize_center_crop(img: Any, size: int) -> Any:
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class ClipPreprocess:
    """OpenAI CLIP's evaluation preprocessing (picklable): RGB, resize the shorter side
    (bicubic), centre crop, ``[0, 1]`` tensor, normalise."""

    def __init__(
        self, size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        from .data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        self.size = int(size)
        self.mean = tuple(mean or OPENAI_CLIP_MEAN)
        self.std = tuple(std or OPENAI_CLIP_STD)

    def __call__(self, img: Any) -> Tensor:
        img = _resize_center_crop(img, self.size)
        arr = np.asarray(img, dtype=np.uint8)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"ClipPreprocess(size={self.size})"


class HFPreprocess:
    """A Hugging Face image processor as a ``PIL image -> (3, H, W)`` transform."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, img: Any) -> Tensor:
        out = self.processor(images=img.convert("RGB"), return_tensors="pt")
        return out["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFPreprocess({type(self.processor).__name__})"


@dataclass
class ModelBundle:
    """What :func:`build_model` returns. Unpacks as
    ``model, tokenizer, train_transform, eval_transform = build_model("tiny")``.

    ``preprocess`` is the model's deterministic image preprocessing (PIL -> tensor);
    ``train_transform`` adds the training augmentation (random flip, patch shuffle) and
    ``deterministic_train`` says whether it is deterministic (only then may :func:`train`
    pass dataset indices to the wrapper's teacher cache).
    """

    model: nn.Module
    tokenizer: Any
    train_transform: Callable[[Any], Tensor]
    eval_transform: Callable[[Any], Tensor]
    spec: ModelSpec
    preprocess: Callable[[Any], Tensor]
    image_size: int | None
    transform_kind: str = "model"
    flip: bool = True

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.train_transform, self.eval_transform))

    @property
    def deterministic_train(self) -> bool:
        return not self.flip and self.transform_kind == "model"

    def transform(self, train: bool = False, degrade: Any = None) -> Callable[[Any], Tensor]:
        """The dataset transform: ``[degrade] -> [augmentation if train] -> preprocess``."""
        from .data import default_transform

        if self.transform_kind == "patch-selection":
            base = _patch_selection(self.image_size, train=train, flip=self.flip)
            return default_transform(base, train=False, degrade=degrade)
        return default_transform(self.preprocess, train=train and self.flip, degrade=degrade)

    def info(self) -> dict[str, Any]:
        """JSON description stored beside checkpoints (to rebuild the model for evaluation)."""
        return {
            "format": "dgsnet.model",
            "spec": str(self.spec),
            "transform": self.transform_kind,
            "flip": self.flip,
            "image_size": self.image_size,
        }


def _patch_selection(image_size: int | None, train: bool, flip: bool) -> Callable[[Any], Tensor]:
    from .data import PatchSelection

    if image_size is None or image_size % 7:
        raise ModelLoadError(
            f"--transform patch-selection tiles 7x7 patches, so the model's image size must be a "
            f"multiple of 7 (224 for CLIP ViT-L/14; tiny:56 for the tiny model); got {image_size}"
        )
    patch = image_size // 7
    if train:
        return PatchSelection(patch_size=patch, flip=flip)
    return PatchSelection(patch_size=patch, deterministic=True)


def _tiny_model(image_size: int) -> nn.Module:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return open_clip.CLIP(
            embed_dim=32,
            vision_cfg=dict(image_size=image_size, patch_size=8, width=64, layers=2, head_width=32),
            text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=1),
        )


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(
    spec: str | ModelSpec,
    *,
    pretrained: str | None = None,
    transform: str = "model",
    flip: bool = True,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelBundle:
    """Build a CLIP model, its tokenizer and its transforms from a spec (see :class:`ModelSpec`).

    ``transform``: ``"model"`` (the model's own preprocessing) or ``"patch-selection"``
    (DGS-Net's 7x7 spectral-entropy patch mosaic, ImageNet mean/std; the image size must be a
    multiple of 7). ``flip``: random horizontal flip in the training transform (the reference
    setting; makes the training transform non-deterministic).

    Pretrained weights are never downloaded silently from here: open_clip / transformers use
    their local caches first; without network access they must already be there (or pass a
    local file / folder). Failures raise :class:`ModelLoadError` with the reason.
    """
    if transform not in ("model", "patch-selection"):
        raise ModelLoadError(f"transform must be 'model' or 'patch-selection', got {transform!r}")
    ms = ModelSpec.parse(spec, pretrained)
    if ms.kind == "tiny":
        import open_clip

        model = _tiny_model(int(ms.image_size or _TINY_DEFAULT_SIZE))
        tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the BPE vocabulary ships with open_clip
        size: int | None = ms.image_size
        preprocess: Callable[[Any], Tensor] = ClipPreprocess(int(size or _TINY_DEFAULT_SIZE))
    elif ms.kind == "open_clip":
        try:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(
                ms.name,
                pretrained=ms.pretrained,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            )
            tokenizer = open_clip.get_tokenizer(ms.name)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load open_clip model {ms.name!r} with weights {ms.pretrained!r}: "
                f"{_short(exc)} (the weights must be available locally: in the open_clip / "
                "Hugging Face cache, or as a file path after '@')"
            ) from exc
        raw = getattr(model.visual, "image_size", None)
        size = int(raw[0] if isinstance(raw, (tuple, list)) else raw) if raw is not None else None
    else:
        try:
            import transformers
        except ImportError as exc:
            raise ModelLoadError(
                "hf: model specs need transformers: pip install 'dgsnet[hf]'"
            ) from exc
        kw: dict[str, Any] = {}
        if cache_dir is not None:
            kw["cache_dir"] = os.fspath(cache_dir)
        try:
            model = transformers.AutoModel.from_pretrained(ms.name, **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(ms.name, **kw)
            processor = transformers.AutoImageProcessor.from_pretrained(ms.name, **kw)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load Hugging Face model {ms.name!r}: {_short(exc)} (it needs the model, "
                "tokenizer and image-processor files, available locally or in the HF cache)"
            ) from exc
        preprocess = HFPreprocess(processor)
        raw = getattr(getattr(model.config, "vision_config", None), "image_size", None)
        size = int(raw) if isinstance(raw, int) else None
    model = model.to(torch.device(device))
    bundle = ModelBundle(
        model=model,
        tokenizer=tokenizer,
        train_transform=preprocess,
        eval_transform=preprocess,
        spec=ms,
        preprocess=preprocess,
        image_size=size,
        transform_kind=transform,
        flip=flip,
    )
    bundle.train_transform = bundle.transform(train=True)
    bundle.eval_transform = bundle.transform(train=False)
    return bundle


# ============================================================================================
# distributed
# ============================================================================================


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1`` in the
    environment): backend NCCL on CUDA, gloo otherwise. Idempotent; a single process (no
    ``WORLD_SIZE``) never touches ``torch.distributed``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dev = torch.device(device) if device is not None else None
        backend = "nccl" if (dev is not None and dev.type == "cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (an all-reduce; the flag itself otherwise)."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ============================================================================================
# data
# ============================================================================================


def open_datasets(
    roots: Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Any] | None,
    *,
    captions: Any = None,
    caption_fallback: Any = None,
    subsets: Sequence[str] | None = None,
    split: str = "train",
    allow_single_class: bool = False,
) -> list[Any]:
    """Open each root with :func:`dgsnet.data.open_dataset` (detection or GenImage layout).

    ``captions``: ``None``, ``"auto"`` (``<split>_text/<split>.json`` beside each root), one
    caption file / mapping for every root, or a list with one entry per root."""
    from .data import open_dataset

    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise TrainingConfigError("no dataset root given")
    if isinstance(captions, (list, tuple)):
        if len(captions) not in (1, len(roots)):
            raise TrainingConfigError(
                f"got {len(captions)} caption files for {len(roots)} roots: give one for all "
                "or one per root"
            )
        per_root = list(captions) * (len(roots) if len(captions) == 1 else 1)
    else:
        per_root = [captions] * len(roots)
    out = []
    for root, cap in zip(roots, per_root, strict=True):
        kwargs: dict[str, Any] = {
            "transform": transform,
            "captions": cap,
            "allow_single_class": allow_single_class,
        }
        if caption_fallback not in (None, False):
            kwargs["caption_fallback"] = caption_fallback
        if subsets:
            kwargs["subsets"] = list(subsets)
        out.append(open_dataset(root, split=split, **kwargs))
    return out


class TrainItems(Dataset):
    """Several datasets of :class:`dgsnet.data.Sample` items seen as one, with global indices
    (the teacher-cache key) and seeded augmentation.

    Item ``i`` of "epoch" ``tag`` (:meth:`set_epoch`) is produced under torch's RNG seeded
    with ``(seed, tag, i)`` and the caller's RNG state is restored afterwards, so a random
    flip or patch shuffle depends only on the seed, the epoch and the item, not on worker
    processes, ranks or where a resumed run started.
    """

    def __init__(self, datasets: Dataset | Sequence[Dataset], seed: int = 0) -> None:
        if isinstance(datasets, Dataset) and not isinstance(datasets, (list, tuple)):
            datasets = [datasets]
        self.datasets = list(datasets)
        if not self.datasets:
            raise TrainingConfigError("no training data")
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()
        if self.offsets[-1] == 0:
            raise TrainingConfigError("the training data holds no images")
        self.seed = int(seed)
        self.tag: Any = "init"

    def set_epoch(self, tag: Any) -> None:
        self.tag = tag

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.datasets[k], index - int(self.offsets[k])

    def __getitem__(self, index: int) -> Any:
        from .data import CorruptImageError, DatasetError, Sample

        ds, local = self.locate(int(index))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(self.seed, "item", self.tag, int(index)))
            try:
                item = ds[local]
            except CorruptImageError as exc:
                # a one-argument error type survives the trip out of a DataLoader worker
                raise DatasetError(str(exc)) from exc
        if not isinstance(item, Sample):
            item = Sample(*item)
        return item._replace(index=int(index))


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation, sharded like :class:`~torch.utils.data.DistributedSampler`
    (padded to a multiple of ``world_size``, rank ``r`` takes every ``world_size``-th item
    from ``r``), that can start part-way into an epoch (:meth:`set_start`).

    The permutation of epoch ``e`` comes from a generator seeded with
    :meth:`permutation_seed` ``(seed, e)``: a resumed run sees exactly the same batches."""

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if n < 1:
            raise ValueError("ResumableSampler needs at least one item")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip this rank's first ``start`` items of the epoch."""
        self.start = int(start)

    def permutation_seed(self, epoch: int | None = None) -> int:
        return _derive_seed(self.seed, "perm", self.epoch if epoch is None else epoch)

    @property
    def per_rank(self) -> int:
        return self.n if self.world_size == 1 else math.ceil(self.n / self.world_size)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.permutation_seed())
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            total = self.per_rank * self.world_size
            while len(order) < total:
                order += order[: total - len(order)]
            order = order[self.rank : total : self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def dataset_fingerprint(datasets: Sequence[Any]) -> dict[str, Any]:
    """A sha256 over every image's path (relative to its dataset root), label, file size and
    caption: a resumed run refuses to continue on different data."""
    h = hashlib.sha256()
    n = 0
    for ds in datasets:
        paths = getattr(ds, "paths", None)
        labels = getattr(ds, "labels", None)
        if paths is None or labels is None:
            h.update(f"opaque:{type(ds).__name__}:{len(ds)}\n".encode())
            n += len(ds)
            continue
        root = os.fspath(getattr(ds, "root", "") or "")
        cap = getattr(ds, "caption", None)
        for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
            rel = os.path.relpath(p, root) if root else p
            try:
                size = os.stat(p).st_size
            except OSError:
                size = -1
            c = cap(i) if callable(cap) else None
            h.update(f"{rel}\t{int(y)}\t{size}\t{c}\n".encode())
        n += len(paths)
    return {"sha256": h.hexdigest(), "num_images": n}


class _Stage1Batches:
    """Re-iterable loader for ``fit_teacher_head``: each pass is one epoch with its own
    permutation and augmentation seed; yields ``(images, captions, labels, index | None)``."""

    def __init__(
        self,
        items: TrainItems,
        batch_size: int,
        seed: int,
        shuffle: bool,
        device: torch.device,
        pass_index: bool,
        num_workers: int,
        stop: Callable[[], bool],
    ) -> None:
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.sampler = ResumableSampler(
            len(items), seed=_derive_seed(seed, "stage1"), shuffle=shuffle
        )
        self.device, self.pass_index, self.num_workers = device, pass_index, num_workers
        self.epoch = -1
        self.stop = stop

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, list[Any], Tensor, Tensor | None]]:
        from .data import collate

        self.epoch += 1
        self.items.set_epoch(("stage1", self.epoch))
        self.sampler.set_epoch(self.epoch)
        loader = _make_loader(
            self.items,
            self.sampler,
            self.batch_size,
            self.num_workers,
            _derive_seed(self.seed, "loader1", self.epoch),
            self.device,
            collate,
        )
        for batch in _iterate(loader):
            if self.stop():
                raise TrainingInterrupted("interrupted during stage 1 (stage 1 restarts on resume)")
            index = batch.indices if self.pass_index else None
            yield batch.images.to(self.device), batch.captions, batch.labels, index


def _iterate(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader`` and stop its worker processes as soon as the loop ends, also on an
    exception (left to the garbage collector, workers that raised linger for seconds)."""
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def _make_loader(
    ds: Dataset,
    sampler: Sampler[int],
    batch_size: int,
    num_workers: int,
    seed: int,
    device: torch.device,
    collate_fn: Callable[..., Any],
) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


# ============================================================================================
# checkpoints
# ============================================================================================


def _commit_dir(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``target``: the old ``target`` is renamed
    to ``<target>.prev`` first and deleted only after the new one is in place, so a crash at
    any moment leaves a complete ``target`` or a complete ``<target>.prev``."""
    prev = target.with_name(target.name + ".prev")
    if target.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(target, prev)
    # (no target but a prev: a crash came between the renames last time; prev stays until
    # the new target is in place)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(prev, ignore_errors=True)


def _tmp_dir(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def find_resume_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """``OUT/last``, or ``OUT/last.prev`` when a crash came between the two renames of a
    checkpoint commit; ``None`` when there is nothing to resume."""
    out = Path(out_dir)
    for name in (LAST_DIR, LAST_DIR + ".prev"):
        if (out / name).is_dir():
            return out / name
    return None


def _canonical(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, NaN kept), for checksums and comparison."""
    return json.dumps(json_safe(obj, finite=False), sort_keys=True, allow_nan=True)


def _optimizer_payload(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        name = names[int(idx)]
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_names": names, "param_groups": groups, "scalars": scalars}


def _restore_optimizer(
    opt: torch.optim.Optimizer,
    names: list[str],
    tensors: dict[str, Tensor],
    meta: Mapping[str, Any],
    where: Path,
) -> None:
    saved = list(meta.get("param_names", []))
    if saved != names:
        raise CheckpointError(
            f"{where}: the optimizer state was saved for other parameters ({len(saved)} saved, "
            f"{len(names)} now); the model or LoRA settings changed"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, slot = key.rpartition("/")
        if name not in names:
            raise CheckpointError(f"{where}: optimizer tensor {key!r} names no parameter")
        state.setdefault(names.index(name), {})[slot] = value
    for name, extra in (meta.get("scalars") or {}).items():
        state.setdefault(names.index(name), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: the optimizer state does not fit: {exc}") from exc


def _write_state_json(path: Path, state: dict[str, Any]) -> None:
    body = dict(state)
    body.pop("checksum", None)
    body["checksum"] = hashlib.sha256(_canonical(body).encode()).hexdigest()
    atomic_write_json(path, json.loads(_canonical(body)))


def _read_state_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} holds no {STATE_NAME}: not a complete training checkpoint"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}): the checkpoint is truncated or damaged"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a dgsnet training state")
    if state.get("format_version", 0) > STATE_VERSION:
        raise CheckpointError(
            f"{path} has format_version {state.get('format_version')}; this dgsnet reads "
            f"{STATE_VERSION}"
        )
    recorded = state.pop("checksum", None)
    if recorded != hashlib.sha256(_canonical(state).encode()).hexdigest():
        raise CheckpointError(
            f"{path} does not match its own checksum: the checkpoint was modified or damaged"
        )
    return state


def _teacher_cache_rows(wrapper: DGSWrapper) -> tuple[Tensor, Tensor] | None:
    """The wrapper's cached teacher logits as ``(indices, rows)`` (``None`` when empty)."""
    cache = getattr(wrapper, "_teacher_cache", None)
    filled = getattr(cache, "filled", None)
    if cache is None or not isinstance(filled, Tensor) or not bool(filled.any()):
        return None
    idx = filled.nonzero().flatten()
    rows = cache.lookup(idx)
    return (idx, rows) if rows is not None else None


def _restore_teacher_cache(wrapper: DGSWrapper, tensors: Mapping[str, Tensor]) -> None:
    cache = getattr(wrapper, "_teacher_cache", None)
    if cache is not None and "index" in tensors and "rows" in tensors and tensors["index"].numel():
        cache.store(tensors["index"], tensors["rows"])


def _caption_table(wrapper: DGSWrapper, items: TrainItems) -> tuple[Tensor, Tensor] | None:
    """Text features of every caption of ``items`` computed once, in a fixed order and fixed
    chunks: ``(features (U, D) on the CPU, row of each item (N,))``. Fixed chunks make the
    features independent of which batch first met a caption (the matmuls of a batch may round
    differently from those of another), which a resumed run needs to be bitwise exact.
    ``None`` when a dataset has no per-item captions."""
    captions: list[str] = []
    for ds in items.datasets:
        get = getattr(ds, "caption", None)
        if not callable(get):
            return None
        for i in range(len(ds)):
            c = get(i)
            if not isinstance(c, str):
                return None
            captions.append(c)
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    old = wrapper.config.text_cache_size
    wrapper.config.text_cache_size = 0  # no LRU copy of what the table holds
    try:
        chunks = [
            wrapper.encode_text(unique[i : i + 256]).detach().cpu()
            for i in range(0, len(unique), 256)
        ]
    finally:
        wrapper.config.text_cache_size = old
    return torch.cat(chunks), torch.tensor([row[c] for c in captions], dtype=torch.long)


# ============================================================================================
# training
# ============================================================================================


@dataclass
class TrainState:
    """Handed to callbacks ``callback(event, state)``. Events: ``"train_begin"``,
    ``"stage1_end"``, ``"step_end"``, ``"checkpoint"``, ``"epoch_end"``, ``"train_end"``."""

    wrapper: DGSWrapper
    out_dir: Path
    rank: int = 0
    stage: int = 1
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    skipped_steps: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    model: nn.Module | None = None
    record: dict[str, Any] = field(default_factory=dict)
    stage1_history: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    wrapper: DGSWrapper
    out_dir: Path
    final_dir: Path | None
    global_step: int
    skipped_steps: int
    epochs: int
    stage1_history: list[float]
    resumed_from: int | None
    elapsed_s: float


class _JsonlLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        if self.fh is None:
            return
        self.fh.write(json.dumps(json_safe(record), sort_keys=False) + "\n")
        self.fh.flush()

    def offset(self) -> int:
        if self.fh is None:
            return 0
        self.fh.flush()
        return self.fh.tell()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class _StopFlag:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, stop. A second signal
    interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.enabled = enabled and _in_main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\ndgsnet: {signal.Signals(signum).name} received: stopping after this step "
            "(checkpoint first); send it again to stop at once",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopFlag:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TrainingConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise TrainingConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _parse_stage(stage: Any) -> str:
    s = str(stage).lower()
    if s not in ("1", "2", "both"):
        raise TrainingConfigError(f"stage must be 1, 2 or 'both', got {stage!r}")
    return s


def _first_nonfinite_grad(named: Sequence[tuple[str, nn.Parameter]]) -> str | None:
    grads = [(n, p.grad) for n, p in named if p.grad is not None]
    if not grads:
        return None
    ok = torch.stack([torch.isfinite(g).all() for _, g in grads])
    if bool(ok.all()):
        return None
    return grads[int((~ok).nonzero()[0, 0])][0]


def train(
    wrapper: DGSWrapper,
    data: Dataset | Sequence[Dataset],
    out_dir: str | os.PathLike[str],
    *,
    stage: int | str = "both",
    epochs: int = 1,
    stage1_epochs: int = 3,
    batch_size: int = 32,
    lr: float = 1e-4,
    stage1_lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_step: int = 10,
    lr_gamma: float = 0.9,
    seed: int = 0,
    shuffle: bool = True,
    resume: bool | None = None,
    init_from: str | os.PathLike[str] | None = None,
    save_every: int = 500,
    log_every: int = 1,
    on_nonfinite: str = "raise",
    num_workers: int = 0,
    deterministic_transform: bool = False,
    deterministic: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[str, TrainState], None]] = (),
    model_info: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    handle_signals: bool = False,
    precompute_text: bool = True,
) -> TrainResult:
    """Two-stage DGS-Net training with resumable checkpoints (see the module docstring).

    Args:
        wrapper: the :class:`DGSWrapper` to train (in place), on its device.
        data: a dataset of :class:`dgsnet.data.Sample` items (e.g. a
            :class:`~dgsnet.data.DetectionFolder` with a training transform and captions), or a
            list of them.
        out_dir: output folder: ``last/`` (training state, replaced atomically), ``final/``
            (``save_pretrained`` weights), ``train_log.jsonl``, ``run.json``, ``summary.json``.
        stage: ``1`` (teacher head only), ``2`` (LoRA + heads; needs a teacher head from
            ``init_from`` unless alignment is off) or ``"both"``.
        epochs / stage1_epochs / batch_size / lr / stage1_lr / betas: stage 2 uses Adam(lr,
            betas) with the learning rate multiplied by ``lr_gamma`` every ``lr_step`` epochs.
        seed: drives the permutation, the augmentation and the LoRA dropout (reproducible).
        resume: ``None`` (default) resumes from ``out_dir/last`` when it exists, ``True``
            requires it, ``False`` deletes any previous training state and starts over.
        init_from: a checkpoint folder (``save_pretrained`` format) whose weights initialise a
            fresh run, e.g. a stage-1 run's ``final/`` for ``stage=2``.
        save_every: write ``last/`` every this many stage-2 steps (0: at epoch ends only); it
            is also written after stage 1 and at every epoch end.
        on_nonfinite: ``"raise"`` (:class:`NonFiniteError` naming the step) or ``"skip"``
            (the step's update is dropped: weights and optimizer state untouched; counted).
        num_workers: DataLoader worker processes.
        deterministic_transform: declare that the training transform is deterministic; only
            then are dataset indices passed to the wrapper (teacher cache). A random flip or
            patch shuffle makes it non-deterministic (:attr:`ModelBundle.deterministic_train`).
        deterministic: ``torch.use_deterministic_algorithms(True)`` during the run.
        progress: tqdm progress bars (rank 0 only).
        callbacks: ``callback(event, TrainState)`` functions (rank 0 and others alike).
        model_info: JSON stored as ``dgsnet_model.json`` beside the weights so that
            :func:`load_trained` can rebuild the model (:meth:`ModelBundle.info`).
        run_info: extra JSON stored in ``run.json`` (e.g. the command-line options).
        handle_signals: on SIGINT/SIGTERM finish the step, checkpoint and raise
            :class:`TrainingInterrupted`.
        precompute_text: compute the text features of every caption once before stage 2
            (fixed order and chunking; ``U x D`` floats in CPU memory for ``U`` distinct
            captions) and feed them to the wrapper; this makes resumed runs bitwise exact and
            saves text-tower work. ``False`` passes the captions (the wrapper's LRU cache).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined, stage 2 runs under
    ``DistributedDataParallel`` on sharded batches (``batch_size`` per process), stage 1 runs
    the (cheap) linear probe on the full data on every rank and keeps rank 0's head, and only
    rank 0 logs, shows progress and writes checkpoints (between barriers).
    """
    t_start = time.perf_counter()
    if not isinstance(wrapper, DGSWrapper):
        raise TrainingConfigError(f"train needs a DGSWrapper, got {type(wrapper).__name__}")
    stage_s = _parse_stage(stage)
    epochs = _check_positive_int("epochs", epochs)
    stage1_epochs = _check_positive_int("stage1_epochs", stage1_epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    lr = _check_positive_float("lr", lr)
    stage1_lr = _check_positive_float("stage1_lr", stage1_lr)
    lr_step = _check_positive_int("lr_step", lr_step)
    lr_gamma = _check_positive_float("lr_gamma", lr_gamma)
    save_every = _check_positive_int("save_every", save_every, 0)
    log_every = _check_positive_int("log_every", log_every)
    num_workers = _check_positive_int("num_workers", num_workers, 0)
    seed = _check_positive_int("seed", seed, 0)
    if on_nonfinite not in ("raise", "skip"):
        raise TrainingConfigError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise TrainingConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
    betas = (float(betas[0]), float(betas[1]))
    cfg = wrapper.config
    if stage_s == "2" and cfg.alignment and init_from is None:
        if resume is False or find_resume_checkpoint(Path(out_dir)) is None:
            raise TrainingConfigError(
                "stage 2 alone needs a trained teacher head for Prior Alignment: pass init_from "
                "(e.g. a stage-1 run's final/ folder), run stage 'both', or switch alignment off"
            )

    device = wrapper.device
    dist_info = setup_distributed(device)
    main = dist_info.is_main
    out = Path(out_dir)
    items = TrainItems(data, seed=seed)
    fingerprint = dataset_fingerprint(items.datasets)
    resume_key = {
        "stage": stage_s,
        "config": cfg.to_dict(),
        "batch_size": batch_size,
        "lr": lr,
        "stage1_lr": stage1_lr,
        "stage1_epochs": stage1_epochs,
        "betas": list(betas),
        "lr_step": lr_step,
        "lr_gamma": lr_gamma,
        "seed": seed,
        "shuffle": shuffle,
        "world_size": dist_info.world_size,
        "deterministic_transform": bool(deterministic_transform),
        "model": (model_info or {}).get("spec"),
    }

    # -- resume or start over ---------------------------------------------------------------
    ckpt = find_resume_checkpoint(out) if resume is not False else None
    if resume is True and ckpt is None:
        raise TrainingConfigError(f"nothing to resume: {out / LAST_DIR} does not exist")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            for name in (
                LAST_DIR,
                LAST_DIR + ".prev",
                f".{LAST_DIR}.tmp",
                FINAL_DIR,
                LOG_NAME,
                SUMMARY_NAME,
            ):
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    _barrier(dist_info)

    state: dict[str, Any] | None = None
    if ckpt is not None:
        state = _load_training_state(ckpt, wrapper, resume_key, fingerprint, epochs)
    elif init_from is not None:
        try:
            wrapper.load_checkpoint(resolve_checkpoint(init_from))
        except CheckpointError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            raise CheckpointError(f"cannot initialise from {init_from}: {exc}") from exc

    log_path = out / LOG_NAME if main else None
    if main and state is not None and log_path is not None and log_path.exists():
        with open(log_path, "r+b") as fh:
            fh.truncate(min(int(state.get("log_offset", 0)), os.path.getsize(log_path)))
    log = _JsonlLog(log_path)
    if main:
        atomic_write_json(
            out / RUN_NAME,
            json_safe(
                {
                    "format": "dgsnet.run",
                    "model": dict(model_info or {}),
                    "options": dict(run_info or {}),
                    "training": resume_key,
                    "dataset": fingerprint,
                }
            ),
        )

    try:
        if state is None:
            seed_everything(seed)
        else:
            _set_rng_state(state["rng"])
    except BaseException:
        log.close()
        raise

    ts = TrainState(wrapper=wrapper, out_dir=out, rank=dist_info.rank)
    ts.stage1_history = list(state.get("stage1_history", [])) if state else []
    stage1_done = bool(state["stage1_done"]) if state else stage_s == "2"
    start_epoch = int(state["epoch"]) if state else 0
    start_batch = int(state["batch"]) if state else 0
    ts.global_step = int(state["global_step"]) if state else 0
    ts.skipped_steps = int(state["skipped_steps"]) if state else 0
    resumed_from = ts.global_step if state else None
    log.write(
        {
            "event": "resume" if state else "start",
            "time": time.time(),
            "step": ts.global_step,
            "epoch": start_epoch,
            "batch": start_batch,
            "world_size": dist_info.world_size,
            "checkpoint": os.fspath(ckpt) if ckpt else None,
            "num_images": fingerprint["num_images"],
        }
    )

    def emit(event: str) -> None:
        for cb in callbacks:
            cb(event, ts)

    named = list(wrapper.named_trainable_parameters())
    names = [n for n, _ in named]
    opt: torch.optim.Optimizer | None = None
    sched: Any = None

    def checkpoint(phase: str, epoch: int, batch: int) -> None:
        _barrier(dist_info)
        if main:
            target = out / LAST_DIR
            tmp = _tmp_dir(target)
            wrapper.save_pretrained(tmp)
            if model_info:
                atomic_write_json(tmp / MODEL_INFO_NAME, dict(model_info))
            opt_meta: dict[str, Any] | None = None
            if opt is not None:
                tensors, opt_meta = _optimizer_payload(opt, names)
                opt_meta["sha256"] = save_tensors(
                    tmp / OPTIMIZER_NAME, tensors, metadata={"format": "dgsnet.optimizer"}
                )
            cache_meta: dict[str, Any] | None = None
            cached = _teacher_cache_rows(wrapper) if deterministic_transform else None
            if cached is not None:
                cache_meta = {
                    "rows": int(cached[0].numel()),
                    "sha256": save_tensors(
                        tmp / TEACHER_CACHE_NAME,
                        {"index": cached[0], "rows": cached[1]},
                        metadata={"format": "dgsnet.teacher_cache"},
                    ),
                }
            body = {
                "format": STATE_FORMAT,
                "format_version": STATE_VERSION,
                "phase": phase,
                "teacher_cache": cache_meta,
                "stage1_done": stage1_done,
                "epoch": epoch,
                "batch": batch,
                "global_step": ts.global_step,
                "skipped_steps": ts.skipped_steps,
                "stage1_history": ts.stage1_history,
                "sampler": {
                    "seed": seed,
                    "epoch": epoch,
                    "start_batch": batch,
                    "batch_size": batch_size,
                    "permutation_seed": ResumableSampler(1, seed).permutation_seed(epoch),
                    "shuffle": shuffle,
                    "world_size": dist_info.world_size,
                },
                "rng": _rng_state(),
                "optimizer": opt_meta,
                "scheduler": sched.state_dict() if sched is not None else None,
                "resume_key": resume_key,
                "dataset": fingerprint,
                "weights_sha256": sha256_file(tmp / WEIGHTS_NAME),
                "log_offset": log.offset() if log.fh else 0,
                "time": time.time(),
            }
            _write_state_json(tmp / STATE_NAME, body)
            _commit_dir(tmp, target)
            log.write(
                {
                    "event": "checkpoint",
                    "step": ts.global_step,
                    "epochs_done": epoch,
                    "batches_done_in_epoch": batch,
                    "phase": phase,
                }
            )
        _barrier(dist_info)
        emit("checkpoint")

    stop = _StopFlag(handle_signals)
    model: nn.Module = wrapper
    elapsed = 0.0
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        with stop:
            emit("train_begin")
            # -- stage 1 ------------------------------------------------------------------------
            if stage_s in ("1", "both") and not stage1_done:
                ts.stage = 1
                loader1 = _Stage1Batches(
                    items,
                    batch_size,
                    seed,
                    shuffle,
                    device,
                    bool(deterministic_transform),
                    num_workers,
                    lambda: stop.requested,
                )
                history = wrapper.fit_teacher_head(
                    loader1,
                    epochs=stage1_epochs,
                    lr=stage1_lr,
                    betas=betas,
                    progress=progress and main,
                    cache_features=bool(deterministic_transform),
                )
                if dist_info.distributed:
                    import torch.distributed as dist

                    for param in wrapper.teacher_head.parameters():
                        dist.broadcast(param.data, src=0)
                    # each rank filled its teacher cache with its own head: refill from the
                    # broadcast one during stage 2 instead
                    wrapper.clear_teacher_cache()
                ts.stage1_history = [float(h) for h in history]
                for i, h in enumerate(history):
                    log.write({"event": "stage1_epoch", "epoch": i + 1, "loss": h})
                stage1_done = True
                checkpoint("stage2" if stage_s == "both" else "done", 0, 0)
                emit("stage1_end")

            # -- stage 2 ------------------------------------------------------------------------
            if stage_s in ("2", "both"):
                ts.stage = 2
                params = [p for _, p in named]
                opt = torch.optim.Adam(params, lr=lr, betas=betas)
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step, gamma=lr_gamma)
                ts.optimizer, ts.scheduler = opt, sched
                if state is not None and state.get("optimizer"):
                    tensors = load_tensors(ckpt / OPTIMIZER_NAME, state["optimizer"].get("sha256"))  # type: ignore[operator]
                    _restore_optimizer(opt, names, tensors, state["optimizer"], ckpt)  # type: ignore[arg-type]
                if state is not None and state.get("scheduler"):
                    sched.load_state_dict(state["scheduler"])
                if dist_info.distributed:
                    from torch.nn.parallel import DistributedDataParallel as DDP

                    dev_ids = None
                    if device.type == "cuda":
                        dev_ids = [
                            device.index
                            if device.index is not None
                            else torch.cuda.current_device()
                        ]
                    model = DDP(
                        wrapper,
                        device_ids=dev_ids,
                        find_unused_parameters=cfg.plain,
                    )
                ts.model = model
                from .data import collate

                sampler = ResumableSampler(
                    len(items),
                    seed=seed,
                    shuffle=shuffle,
                    rank=dist_info.rank,
                    world_size=dist_info.world_size,
                )
                n_batches = math.ceil(sampler.per_rank / batch_size)
                pass_index = bool(deterministic_transform)
                text_table = (
                    _caption_table(wrapper, items) if (precompute_text and not cfg.plain) else None
                )
                wrapper.train()
                for epoch in range(start_epoch, epochs):
                    ts.epoch = epoch
                    items.set_epoch(("stage2", epoch))
                    sampler.set_epoch(epoch)
                    sampler.set_start(start_batch * batch_size)
                    loader = _make_loader(
                        items,
                        sampler,
                        batch_size,
                        num_workers,
                        _derive_seed(seed, "loader2", epoch),
                        device,
                        collate,
                    )
                    bar = _bar(
                        n_batches,
                        start_batch,
                        f"stage 2 epoch {epoch + 1}/{epochs}",
                        progress and main,
                    )
                    batch_i = start_batch
                    try:
                        for batch in _iterate(loader):
                            batch_i += 1
                            step = ts.global_step + 1
                            record = _train_step(
                                model,
                                wrapper,
                                opt,
                                named,
                                batch,
                                step,
                                epoch,
                                batch_i,
                                n_batches,
                                seed,
                                dist_info,
                                device,
                                pass_index,
                                on_nonfinite,
                                text_table,
                            )
                            ts.global_step = step
                            ts.batch = batch_i
                            if record["skipped"]:
                                ts.skipped_steps += 1
                            record["lr"] = opt.param_groups[0]["lr"]
                            ts.record = record
                            if record["skipped"] or step % log_every == 0:
                                log.write(record)
                            if bar is not None:
                                bar.update(1)
                                post = {"loss": f"{record['loss']:.4f}"}
                                if "removed_fraction" in record.get("stats", {}):
                                    post["removed"] = f"{record['stats']['removed_fraction']:.3f}"
                                if ts.skipped_steps:
                                    post["skipped"] = str(ts.skipped_steps)
                                bar.set_postfix(post)
                            if save_every and step % save_every == 0 and batch_i < n_batches:
                                checkpoint("stage2", epoch, batch_i)
                            emit("step_end")
                            if _any_rank(stop.requested, dist_info, device):
                                checkpoint("stage2", epoch, batch_i)
                                raise TrainingInterrupted(
                                    f"stopped at stage-2 step {step} (epoch {epoch + 1}, batch "
                                    f"{batch_i}/{n_batches}); the checkpoint {out / LAST_DIR} "
                                    "resumes it"
                                )
                    finally:
                        if bar is not None:
                            bar.close()
                    sched.step()
                    start_batch = 0
                    done = epoch + 1 == epochs
                    log.write(
                        {
                            "event": "epoch_end",
                            "epoch": epoch + 1,
                            "step": ts.global_step,
                            "skipped_steps": ts.skipped_steps,
                        }
                    )
                    checkpoint("done" if done else "stage2", epoch + 1, 0)
                    emit("epoch_end")
                wrapper.eval()

            # -- final --------------------------------------------------------------------------
            final_dir: Path | None = None
            _barrier(dist_info)
            if main:
                final_dir = out / FINAL_DIR
                tmp = _tmp_dir(final_dir)
                wrapper.save_pretrained(tmp)
                if model_info:
                    atomic_write_json(tmp / MODEL_INFO_NAME, dict(model_info))
                _commit_dir(tmp, final_dir)
            _barrier(dist_info)
            elapsed = time.perf_counter() - t_start
            summary = {
                "event": "summary",
                "stage": stage_s,
                "global_step": ts.global_step,
                "skipped_steps": ts.skipped_steps,
                "epochs": epochs,
                "stage1_history": ts.stage1_history,
                "resumed_from": resumed_from,
                "final_dir": os.fspath(final_dir) if final_dir else None,
                "elapsed_s": elapsed,
                "num_images": fingerprint["num_images"],
            }
            log.write(summary)
            if main:
                atomic_write_json(out / SUMMARY_NAME, json_safe(summary))
            emit("train_end")
    finally:
        log.close()
        if deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
    return TrainResult(
        wrapper=wrapper,
        out_dir=out,
        final_dir=out / FINAL_DIR if main else None,
        global_step=ts.global_step,
        skipped_steps=ts.skipped_steps,
        epochs=epochs,
        stage1_history=ts.stage1_history,
        resumed_from=resumed_from,
        elapsed_s=elapsed,
    )


def _bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)


def _train_step(
    model: nn.Module,
    wrapper: DGSWrapper,
    opt: torch.optim.Optimizer,
    named: Sequence[tuple[str, nn.Parameter]],
    batch: Any,
    step: int,
    epoch: int,
    batch_i: int,
    n_batches: int,
    seed: int,
    dist_info: DistInfo,
    device: torch.device,
    pass_index: bool,
    on_nonfinite: str,
    text_table: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    torch.manual_seed(_derive_seed(seed, "step", dist_info.rank, step))
    where = f"stage 2, epoch {epoch + 1}, step {step} (batch {batch_i} of {n_batches})"
    images = batch.images.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    index = batch.indices if pass_index else None
    text: Any = batch.captions
    if text_table is not None:
        text = text_table[0][text_table[1][batch.indices]].to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    reason: str | None = None
    out = None
    try:
        out = model(images, text, labels, index=index)
        loss_value = out.loss.detach()
        if not bool(torch.isfinite(loss_value)):
            reason = f"non-finite loss ({loss_value.item()}) at {where}"
    except ValueError as exc:
        if "NaN" not in str(exc):
            raise
        reason = f"non-finite values at {where}: {exc}"
    if _any_rank(reason is not None, dist_info, device) and reason is None:
        reason = f"non-finite loss on another rank at {where}"
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
        out.loss.backward()
        bad = _first_nonfinite_grad(named)
        if bad is not None:
            reason = f"non-finite gradient of {bad} at {where}"
    if reason is not None:
        opt.zero_grad(set_to_none=True)
        if on_nonfinite == "raise":
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


def _load_training_state(
    ckpt: Path,
    wrapper: DGSWrapper,
    resume_key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    epochs: int,
) -> dict[str, Any]:
    state = _read_state_json(ckpt / STATE_NAME)
    saved_key = state.get("resume_key", {})
    diff = sorted(
        k
        for k in set(saved_key) | set(resume_key)
        if _canonical(saved_key.get(k)) != _canonical(resume_key.get(k))
    )
    if diff:
        shown = "; ".join(
            f"{k}: checkpoint {saved_key.get(k)!r}, now {resume_key.get(k)!r}"
            for k in diff
            if k != "config"
        )
        if "config" in diff:
            a, b = saved_key.get("config") or {}, resume_key.get("config") or {}
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            shown = "; ".join(filter(None, [shown, f"DGS config fields {fields}"]))
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: the run's settings changed ({shown}); use the same "
            "settings, or start over with --no-resume (resume=False)"
        )
    saved_fp = state.get("dataset", {})
    if saved_fp.get("sha256") != fingerprint.get("sha256"):
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: the training data changed ({saved_fp.get('num_images')} "
            f"images then, {fingerprint.get('num_images')} now, or other files/labels/captions); "
            "start over with --no-resume (resume=False)"
        )
    if int(state.get("epoch", 0)) > epochs:
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: it already completed {state['epoch']} epochs, more "
            f"than epochs={epochs}"
        )
    if state.get("weights_sha256") and (ckpt / WEIGHTS_NAME).is_file():
        if sha256_file(ckpt / WEIGHTS_NAME) != state["weights_sha256"]:
            raise CheckpointError(
                f"{ckpt / WEIGHTS_NAME} does not match the training state's checksum"
            )
    wrapper.load_checkpoint(ckpt)
    if state.get("teacher_cache"):
        meta = state["teacher_cache"]
        _restore_teacher_cache(wrapper, load_tensors(ckpt / TEACHER_CACHE_NAME, meta.get("sha256")))
    if state.get("optimizer"):
        opt_file = ckpt / OPTIMIZER_NAME
        if not opt_file.is_file():
            raise CheckpointError(f"{ckpt} lacks {OPTIMIZER_NAME}: the checkpoint is incomplete")
        load_tensors(opt_file, state["optimizer"].get("sha256"))  # validate now (clear early error)
    return state


# ============================================================================================
# loading and evaluation
# ============================================================================================


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder (``dgs_config.json`` inside), or a training output folder (its
    ``final/``, else its ``last/``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if (p / CONFIG_NAME).is_file():
        return p
    for name in (FINAL_DIR, LAST_DIR, LAST_DIR + ".prev"):
        if (p / name / CONFIG_NAME).is_file():
            return p / name
    raise CheckpointError(
        f"{p} is neither a dgsnet checkpoint (no {CONFIG_NAME}) nor a training folder with "
        f"{FINAL_DIR}/ or {LAST_DIR}/"
    )


def _model_info(ckpt: Path) -> dict[str, Any] | None:
    for candidate in (ckpt / MODEL_INFO_NAME, ckpt.parent / RUN_NAME):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{candidate} is not valid JSON ({exc})") from exc
            info = data.get("model", data) if candidate.name == RUN_NAME else data
            if isinstance(info, dict) and info.get("spec"):
                return info
    return None


def load_trained(
    path: str | os.PathLike[str],
    *,
    model: str | ModelSpec | None = None,
    device: str | torch.device = "cpu",
    transform: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[DGSWrapper, ModelBundle]:
    """Rebuild a trained detector: the base model from the spec stored beside the weights
    (``dgsnet_model.json``; or ``model=``), then :meth:`DGSWrapper.from_pretrained`. Returns
    ``(wrapper in eval mode, bundle)``; ``bundle.eval_transform`` preprocesses images."""
    ckpt = resolve_checkpoint(path)
    info = _model_info(ckpt) or {}
    spec = model if model is not None else info.get("spec")
    if spec is None:
        raise CheckpointError(
            f"{ckpt} does not record which base model it was trained from (no {MODEL_INFO_NAME}); "
            "pass the model spec (--model, e.g. ViT-L-14@openai)"
        )
    bundle = build_model(
        spec,
        transform=transform or info.get("transform", "model"),
        flip=False,
        device=device,
        cache_dir=cache_dir,
    )
    wrapper = DGSWrapper.from_pretrained(ckpt, bundle.model, bundle.tokenizer)
    wrapper.eval()
    return wrapper, bundle


def _scores_from_logits(logits: Tensor) -> Tensor:
    if logits.dim() == 1 or logits.shape[-1] == 1:
        return torch.sigmoid(logits.reshape(-1).float())
    return torch.softmax(logits.float(), dim=-1)[:, 1]


def predict_scores(
    wrapper: DGSWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "predicting",
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Scores (probability of fake) of every item of a :class:`dgsnet.data.Sample` dataset
    with the student; returns ``(scores, labels, subsets, paths)`` in dataset order."""
    from .data import collate

    def collate_keep_paths(samples: Sequence[Any]) -> tuple[Any, list[str]]:
        return collate(samples), [s.path for s in samples]

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_keep_paths,
    )
    was_training = wrapper.training
    wrapper.eval()
    scores, labels, subsets, paths = [], [], [], []
    bar = _bar(len(loader), 0, desc, progress)
    try:
        with torch.no_grad():
            for batch, batch_paths in _iterate(loader):
                logits = wrapper.predict(batch.images.to(wrapper.device))
                scores.append(_scores_from_logits(logits).cpu().numpy().astype(np.float64))
                labels.append(batch.labels.numpy())
                subsets.extend(batch.subsets)
                paths.extend(batch_paths)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        wrapper.train(was_training)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64), [], []
    return np.concatenate(scores), np.concatenate(labels), subsets, paths


def evaluate(
    wrapper: DGSWrapper,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Tensor] | None = None,
    *,
    jpeg_quality: int | None = None,
    blur_sigma: float | None = None,
    resize_scale: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    subsets: Sequence[str] | None = None,
    split: str = "val",
    threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, MetricsTable]:
    """Evaluate the student on each test root; returns ``{root: MetricsTable}`` (one row per
    subset, plus the mean row when printed), in the order given.

    ``transform``: the model's deterministic preprocessing (e.g. ``bundle.preprocess`` or
    ``bundle.eval_transform``; default: CLIP preprocessing at the model's image size).
    ``jpeg_quality`` / ``blur_sigma`` / ``resize_scale``: :class:`dgsnet.data.Degrade` applied
    to every image before it (robustness tables). Roots use the detection layout
    ``<root>/<subset>[/<category>]/{0_real,1_fake}`` or GenImage's (``split``)."""
    from .data import Degrade, default_transform, open_dataset

    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = list(roots)
    if not roots:
        raise TrainingConfigError("evaluate needs at least one test root")
    batch_size = _check_positive_int("batch_size", batch_size)
    degrade = Degrade(jpeg_quality=jpeg_quality, blur_sigma=blur_sigma, resize_scale=resize_scale)
    if transform is None:
        size = wrapper.encoder.image_size
        transform = default_transform(None, image_size=size[0] if size else 224)
    tf = default_transform(transform, train=False, degrade=degrade)
    tables: dict[str, MetricsTable] = {}
    for root in roots:
        kwargs: dict[str, Any] = {"transform": tf}
        if subsets:
            kwargs["subsets"] = list(subsets)
        ds = open_dataset(root, split=split, **kwargs)
        key = os.fspath(root)
        scores, labels, names, _ = predict_scores(
            wrapper,
            _EvalItems(ds),
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"evaluating {Path(key).name}",
        )
        preds: dict[str, tuple[list[int], list[float]]] = {}
        for s, y, name in zip(scores.tolist(), labels.tolist(), names, strict=True):
            ys, ss = preds.setdefault(name, ([], []))
            ys.append(int(y))
            ss.append(float(s))
        tables[key] = MetricsTable.from_predictions(preds, threshold=threshold)
    return tables


class _EvalItems(Dataset):
    """A dataset whose corrupt images raise a one-argument :class:`DatasetError` (so the
    error crosses DataLoader workers intact)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        from .data import CorruptImageError, DatasetError

        try:
            return self.dataset[index]
        except CorruptImageError as exc:
            raise DatasetError(str(exc)) from exc
