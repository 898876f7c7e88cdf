"""The text of `load_detector.py`, the loader written into every export folder.

The loader uses the target library alone (open_clip, transformers, peft, onnxruntime or
torch), never dgsnet. It holds three functions and a command line:

* `preprocess(image)`: a PIL image or a file path -> `(3, H, W)` float32 numpy array,
  following `preprocessing.json` step by step with PIL and numpy (the same arithmetic as
  torchvision's `Resize`, `CenterCrop`, `ToTensor` and `Normalize` on PIL images). DGS-Net's
  patch selection is the one step it leaves to `dgsnet.data.PatchSelection`;
* `load_detector(folder)`: returns `detector(pixels) -> logits` on `(B, 3, H, W)`
  float32 arrays;
* `scores(logits)`: P(fake) per image (sigmoid of one logit, softmax of two);
* `python load_detector.py IMAGE ...` prints `path,score` lines.
"""

from __future__ import annotations

__all__ = ["loader_text"]

_HEADER = '''"""A DGS-Net detector exported by dgsnet ({fmt} format).

This loader needs {needs}; not dgsnet.

    python load_detector.py IMAGE [IMAGE ...]     # prints path,score (score = P(fake))

or, from Python (run from this folder or put it on sys.path):

    from load_detector import load_detector, preprocess, scores
    detector = load_detector()
    print(scores(detector(preprocess("photo.jpg")[None])))
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
'''

_PREPROCESS = '''

def _resize_shorter(img, size, resample):
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def _center_crop(img, height, width):
    w, h = img.size
    if width > w or height > h:  # pad with black, as torchvision does
        canvas = Image.new(img.mode, (max(w, width), max(h, height)))
        canvas.paste(img, ((max(w, width) - w) // 2, (max(h, height) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def preprocess(image, folder=HERE):
    """A PIL image or an image file -> the (3, H, W) float32 array the detector takes."""
    spec = json.loads((Path(folder) / "preprocessing.json").read_text(encoding="utf-8"))
    x = Image.open(image) if isinstance(image, (str, Path)) else image
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
    for step in spec["steps"]:
        op = step["op"]
        if op == "resize_shorter":
            x = _resize_shorter(x, step["size"], resample[step["interpolation"]])
        elif op == "resize":
            x = x.resize((step["size"][1], step["size"][0]), resample[step["interpolation"]])
        elif op == "center_crop":
            x = _center_crop(x, *step["size"])
        elif op == "convert_rgb":
            x = x.convert("RGB")
        elif op == "to_tensor":
            x = np.asarray(x.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        elif op == "normalize":
            mean = np.asarray(step["mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(step["std"], dtype=np.float32)[:, None, None]
            x = (np.asarray(x, dtype=np.float32) - mean) / std
        elif op == "hf_image_processor":
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(str(folder))
            x = processor(images=x.convert("RGB"), return_tensors="pt")["pixel_values"][0].numpy()
        elif op == "patch_selection":
            try:  # DGS-Net's patch mosaic: its reference implementation is dgsnet's
                from dgsnet.data import PatchSelection
            except ImportError as exc:
                raise RuntimeError(
                    "this detector was trained on DGS-Net's patch-selection mosaic: install "
                    "dgsnet for dgsnet.data.PatchSelection, or pass pixels you prepared "
                    "yourself following preprocessing.json"
                ) from exc
            keys = ("patch_size", "n_low", "n_high", "shuffle", "deterministic", "seed",
                    "upscale", "normalize", "mean", "std", "spectrum")
            x = PatchSelection(**{k: step[k] for k in keys})(x).numpy()
        else:
            raise ValueError(f"unknown preprocessing step {op!r} in preprocessing.json")
    return np.ascontiguousarray(x, dtype=np.float32)


def scores(logits, folder=HERE):
    """P(fake) per image from the detector's logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True))[:, 1]
'''

_HEAD = '''

def load_head(folder=HERE):
    """The image head as a torch.nn.Linear (head.json describes it)."""
    import torch
    from safetensors.torch import load_file

    info = json.loads((Path(folder) / "head.json").read_text(encoding="utf-8"))
    if not info.get("linear"):
        raise TypeError(
            f"the head is a {info['class']}: build that module yourself and load "
            "head.safetensors into it with load_state_dict"
        )
    head = torch.nn.Linear(info["in_features"], info["out_features"], bias=info["bias"])
    head.load_state_dict(load_file(str(Path(folder) / "head.safetensors")))
    return head.to(getattr(torch, info["dtype"])).eval()


def _torch_detector(features, folder):
    import torch

    head = load_head(folder)
    info = json.loads((Path(folder) / "head.json").read_text(encoding="utf-8"))
    normalize = info["normalize_features"]

    @torch.no_grad()
    def detector(pixels):
        x = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
        f = features(x.to(head.weight.dtype))
        if normalize:
            f = torch.nn.functional.normalize(f, dim=-1)
        return head(f).float().numpy()

    return detector
'''

_MAIN = """

def main(argv):
    if not argv:
        print(__doc__)
        return 2
    detector = load_detector()
    for path in argv:
        score = scores(detector(preprocess(path)[None]))[0]
        print(f"{path},{score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


def _open_clip_body(name: str | None, quick_gelu: bool) -> str:
    if name is None:
        create = '    model = open_clip.create_model("local-dir:" + str(Path(folder)))\n'
    else:
        extra = ", force_quick_gelu=True" if quick_gelu else ""
        create = (
            f"    model = open_clip.create_model(\n        {name!r}, "
            f'pretrained=str(Path(folder) / "open_clip_model.safetensors"){extra}\n    )\n'
        )
    return (
        "\n\ndef load_model(folder=HERE):\n"
        '    """The fine-tuned CLIP (LoRA merged) as a stock open_clip model."""\n'
        "    import open_clip\n\n"
        f"{create}"
        "    return model.eval()\n\n\n"
        "def load_detector(folder=HERE):\n"
        "    model = load_model(folder)\n"
        "    return _torch_detector(model.encode_image, folder)\n"
    )


#: the image features of a transformers CLIP / SigLIP (the hf loader, and peft's on an hf base)
_HF_FEATURES = """

def _features(model):
    def features(x):
        out = model.get_image_features(pixel_values=x)
        return out if hasattr(out, "shape") else out.pooler_output

    return features
"""

_HF_BODY = '''

def load_model(folder=HERE):
    """The fine-tuned CLIP / SigLIP (LoRA merged) as a stock transformers model."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).eval()


def load_detector(folder=HERE):
    return _torch_detector(_features(load_model(folder)), folder)
'''

_PEFT_HF_BODY = '''

def load_model(folder=HERE, base_model=None):
    """The base model with this adapter (peft), e.g. base_model=CLIPModel.from_pretrained(...)."""
    from peft import PeftModel

    if base_model is None:
        from transformers import AutoModel

        base = json.loads((Path(folder) / "base_model.json").read_text(encoding="utf-8"))
        if not base.get("path"):
            raise ValueError(
                "base_model.json names no Hub id or folder for the base model: load the "
                "CLIPModel the run started from yourself and pass it as base_model="
            )
        base_model = AutoModel.from_pretrained(base["path"])
    return PeftModel.from_pretrained(base_model, str(folder)).eval()


def load_detector(folder=HERE, base_model=None):
    return _torch_detector(_features(load_model(folder, base_model)), folder)
'''

_PEFT_OPEN_CLIP_BODY = '''

def load_base(folder=HERE):
    """The open_clip base model the adapter was trained on, as base_model.json names it."""
    import open_clip

    base = json.loads((Path(folder) / "base_model.json").read_text(encoding="utf-8"))
    if base.get("local_dir"):
        return open_clip.create_model("local-dir:" + base["local_dir"])
    if not base.get("model_name") or not base.get("pretrained"):
        raise ValueError(
            "base_model.json names no loadable base: build the open_clip model the run "
            "started from yourself and pass it as base_model="
        )
    return open_clip.create_model(
        base["model_name"], pretrained=base["pretrained"],
        force_quick_gelu=base.get("force_quick_gelu", False),
    )


def load_model(folder=HERE, base_model=None):
    """The base model with this adapter (peft)."""
    from peft import PeftModel

    base_model = load_base(folder) if base_model is None else base_model
    return PeftModel.from_pretrained(base_model.eval(), str(folder)).eval()


def load_detector(folder=HERE, base_model=None):
    model = load_model(folder, base_model)
    return _torch_detector(model.encode_image, folder)
'''

_ONNX_BODY = '''

def load_detector(folder=HERE, providers=("CPUExecutionProvider",)):
    """An onnxruntime session around detector.onnx: pixels (B, 3, H, W) -> logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(folder) / "detector.onnx"), providers=list(providers))

    def detector(pixels):
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        return session.run(["logits"], {"pixels": x})[0]

    return detector
'''

_PT2_BODY = '''

def load_detector(folder=HERE):
    """The torch.export program in detector.pt2: pixels (B, 3, H, W) -> logits."""
    import torch

    module = torch.export.load(str(Path(folder) / "detector.pt2")).module()

    @torch.no_grad()
    def detector(pixels):
        return module(torch.as_tensor(np.asarray(pixels, dtype=np.float32))).numpy()

    return detector
'''


def loader_text(
    fmt: str, *, name: str | None = None, quick_gelu: bool = False, base: str = ""
) -> str:
    """The `load_detector.py` of an export folder.

    Args:
        fmt: the export format (`open_clip`, `hf`, `peft`, `onnx`, `pt2`).
        name: (open_clip) the built-in open_clip model name, or `None` to load the folder
            with open_clip's `local-dir:` schema.
        quick_gelu: (open_clip) pass `force_quick_gelu=True`.
        base: (peft) `"hf"` or `"open_clip"`: the kind of base model.

    Returns:
        The Python source text.

    Raises:
        ValueError: an unknown format.
    """
    needs = {
        "open_clip": "open_clip, torch, safetensors, numpy and pillow",
        "hf": "transformers, torch, safetensors, numpy and pillow",
        "peft": "peft, torch, safetensors, numpy, pillow and "
        + ("transformers" if base == "hf" else "open_clip"),
        "onnx": "onnxruntime, numpy and pillow",
        "pt2": "torch, numpy and pillow",
    }
    if fmt not in needs:
        raise ValueError(f"unknown export format {fmt!r}")
    if fmt == "open_clip":
        body = _HEAD + _open_clip_body(name, quick_gelu)
    elif fmt == "hf":
        body = _HEAD + _HF_FEATURES + _HF_BODY
    elif fmt == "peft" and base == "hf":
        body = _HEAD + _HF_FEATURES + _PEFT_HF_BODY
    elif fmt == "peft":
        body = _HEAD + _PEFT_OPEN_CLIP_BODY
    elif fmt == "onnx":
        body = _ONNX_BODY
    else:
        body = _PT2_BODY
    return _HEADER.format(fmt=fmt, needs=needs[fmt]) + _PREPROCESS + body + _MAIN
