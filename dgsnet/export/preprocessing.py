"""The preprocessing a detector needs, as JSON written beside every exported artefact.

`preprocessing.json` lists the steps from a decoded image to the `(3, H, W)` float tensor the
detector takes, in order, each a small object with an `op` and its arguments:

* `resize_shorter`: resize so that the shorter side is `size` (the longer side
  `int(size * long / short)`), with `interpolation` (`"bicubic"`, antialiased, as
  torchvision's `Resize(size)` on a PIL image does);
* `center_crop`: crop `size = [height, width]` from the centre (torchvision's rounding);
* `convert_rgb`: convert the PIL image to RGB;
* `to_tensor`: `uint8` HWC -> float CHW in `[0, 1]` (divide by 255);
* `normalize`: `(x - mean) / std` per channel (RGB order);
* `patch_selection`: DGS-Net's patch mosaic (see `dgsnet.data.PatchSelection` for the
  algorithm; its arguments are recorded), which also converts and normalises;
* `hf_image_processor`: a Hugging Face image processor (its `preprocessor_config.json`
  content is recorded under `config`).

The same file says how to read the output (`"score"`: `sigmoid(logit)` is the probability
of "fake" for one logit, `softmax(logits)[1]` for two) and the decision threshold the
dgsnet tools use (0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PREPROCESSING_NAME", "describe_preprocessing", "output_description"]

#: the file name of the preprocessing description inside every export folder
PREPROCESSING_NAME = "preprocessing.json"


def _interp_name(value: Any) -> str:
    name = getattr(value, "value", value)
    return str(name).lower()


def _size(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    return [int(v) for v in value]


def _torchvision_step(t: Any) -> dict[str, Any] | None:
    """One torchvision / open_clip transform as a step (`None`: not understood)."""
    from torchvision import transforms as T

    name = type(t).__name__
    if isinstance(t, T.Resize):
        size = t.size
        if isinstance(size, (list, tuple)) and len(size) == 1:
            size = size[0]
        if isinstance(size, int) and t.max_size is None:
            return {
                "op": "resize_shorter",
                "size": size,
                "interpolation": _interp_name(t.interpolation),
                "antialias": bool(t.antialias),
            }
        return {"op": "resize", "size": _size(size), "interpolation": _interp_name(t.interpolation)}
    if isinstance(t, T.CenterCrop):
        return {"op": "center_crop", "size": _size(t.size)}
    if isinstance(t, T.Normalize):
        return {
            "op": "normalize",
            "mean": [float(m) for m in t.mean],
            "std": [float(s) for s in t.std],
        }
    if isinstance(t, T.ToTensor) or name == "MaybeToTensor":
        return {"op": "to_tensor"}
    if name == "MaybeConvertMode" or getattr(t, "__name__", "") == "_convert_to_rgb":
        return {"op": "convert_rgb"}
    return None


def _patch_selection_step(t: Any) -> list[dict[str, Any]]:
    return [
        {
            "op": "patch_selection",
            "patch_size": t.patch_size,
            "n_low": t.n_low,
            "n_high": t.n_high,
            "grid": t.grid,
            "output_size": t.output_size,
            "spectrum": t.spectrum,
            "shuffle": t.shuffle,
            "deterministic": t.deterministic,
            "seed": 0 if t.seed is None else int(t.seed),
            "upscale": t.upscale,
            "normalize": t.normalize,
            "mean": list(t.mean),
            "std": list(t.std),
            "reference_implementation": "dgsnet.data.PatchSelection",
        }
    ]


def _steps(preprocess: Callable[[Any], Any]) -> tuple[list[dict[str, Any]], bool]:
    """The steps of `preprocess` and whether every one was understood."""
    from ..data import PatchSelection
    from ..data.transforms import ClipPreprocess
    from ..models import HFPreprocess

    if isinstance(preprocess, PatchSelection):
        return _patch_selection_step(preprocess), True
    if isinstance(preprocess, ClipPreprocess):
        return [
            {
                "op": "resize_shorter",
                "size": preprocess.size,
                "interpolation": "bicubic",
                "antialias": True,
            },
            {"op": "center_crop", "size": [preprocess.size, preprocess.size]},
            {"op": "convert_rgb"},
            {"op": "to_tensor"},
            {"op": "normalize", "mean": list(preprocess.mean), "std": list(preprocess.std)},
        ], True
    if isinstance(preprocess, HFPreprocess):
        config = preprocess.processor.to_dict()
        return [
            {
                "op": "hf_image_processor",
                "class": type(preprocess.processor).__name__,
                "config": config,
            }
        ], True
    inner = getattr(preprocess, "transforms", None)
    if isinstance(inner, (list, tuple)):
        steps, complete = [], True
        for t in inner:
            step = _torchvision_step(t)
            if step is None:
                steps.append({"op": "unknown", "repr": repr(t)})
                complete = False
            else:
                steps.append(step)
        return steps, complete
    return [{"op": "unknown", "repr": repr(preprocess)}], False


def describe_preprocessing(
    preprocess: Callable[[Any], Any],
    *,
    image_size: tuple[int, int] | None,
    source: str,
) -> dict[str, Any]:
    """The JSON description of a detector's evaluation preprocessing.

    Args:
        preprocess: the deterministic PIL-image -> tensor transform the detector was
            evaluated with (a `ModelBundle`'s `eval_transform`).
        image_size: `(height, width)` of the detector's input, or `None`.
        source: where the description comes from (e.g. `"run folder"`, `"default"`).

    Returns:
        A JSON-ready dict (`format`, `input`, `steps`, `complete`, `source`).
    """
    steps, complete = _steps(preprocess)
    return {
        "format": "dgsnet.preprocessing",
        "version": 1,
        "input": {
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "float32",
            "height": image_size[0] if image_size else None,
            "width": image_size[1] if image_size else None,
        },
        "steps": steps,
        "complete": complete,
        "source": source,
    }


def output_description(num_classes: int, normalize_features: bool) -> dict[str, Any]:
    """How to read the detector's output (stored beside the preprocessing).

    Args:
        num_classes: the image head's outputs (1: one logit; 2: two classes).
        normalize_features: whether the features are L2-normalised before the head.

    Returns:
        A JSON-ready dict.
    """
    score = "sigmoid(logits[:, 0])" if num_classes == 1 else "softmax(logits, dim=-1)[:, 1]"
    return {
        "logits": num_classes,
        "score": score,
        "score_meaning": "probability that the image is AI-generated (fake)",
        "threshold": 0.5,
        "labels": {"0": "real", "1": "fake"},
        "normalize_features": bool(normalize_features),
    }


def merged_info(pre: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
    """`pre` with the output description under `"output"`."""
    return {**pre, "output": dict(out)}
