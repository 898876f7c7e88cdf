"""Every export format, loaded by its own library in a fresh process that cannot import
dgsnet, gives the scores of `load_trained(...).predict` (what `dgsnet predict` computes).

Four sources: a `dgsnet train` run on the tiny open_clip model (rsLoRA on q/k/v), one on a
tiny Hugging Face CLIPModel, a `save_pretrained` folder with standard scaling and LoRA on the
MLP too, and a run folder made by `dgsnet import-released` (patch selection, QuickGELU).
The exported folders are loaded in one subprocess per source: open_clip with a registered
config and `create_model(name, pretrained=FILE)` and with `local-dir:`, transformers
`CLIPModel.from_pretrained`, `peft.PeftModel.from_pretrained` on the base model (and after
`merge_and_unload`), onnxruntime (whole batch and one image at a time), `torch.export.load`,
and each folder's own `load_detector.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dgsnet.evaluation import load_trained
from dgsnet.export import export
from dgsnet.io import save_tensors
from tests.export.conftest import run_without_dgsnet

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

#: score tolerances: float32 formats, and ONNX (onnxruntime's kernels order sums differently)
TOL = 1e-5
TOL_ONNX = 1e-4

LOADER = r"""
import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np

plan = json.loads(Path(sys.argv[1]).read_text())
x = np.load(plan["pixels"])
work = Path(plan["work"])
results = {}


def head_of(d):
    import torch
    from safetensors.torch import load_file

    info = json.loads((Path(d) / "head.json").read_text())
    head = torch.nn.Linear(info["in_features"], info["out_features"], bias=info["bias"])
    head.load_state_dict(load_file(str(Path(d) / "head.safetensors")))
    return head.eval()


def logits_of(features, d):
    import torch

    with torch.no_grad():
        return head_of(d)(features(torch.from_numpy(x))).numpy()


def hf_features(model):
    def features(t):
        out = model.get_image_features(pixel_values=t)
        return out if hasattr(out, "shape") else out.pooler_output
    return features


def open_clip_named(name, cfg, weights):
    import open_clip

    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return open_clip.create_model(name, pretrained=str(weights)).eval()


def fresh_base(item):
    if item["base"] == "hf":
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(item["base_path"]).eval()
    return open_clip_named(item["base_name"], item["base_cfg"], item["base_weights"])


for item in plan["items"]:
    d, fmt = item["dir"], item["format"]
    label = item["label"]
    kwargs = {}
    if fmt == "open_clip":
        import open_clip

        cfg = json.loads((Path(d) / "open_clip_config.json").read_text())["model_cfg"]
        model = open_clip_named(item["name"], cfg, Path(d) / "open_clip_model.safetensors")
        results["open_clip:create_model"] = logits_of(model.encode_image, d)
        model = open_clip.create_model("local-dir:" + d).eval()
        results["open_clip:local-dir"] = logits_of(model.encode_image, d)
    elif fmt == "hf":
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(d).eval()
        results["hf:CLIPModel.from_pretrained"] = logits_of(hf_features(model), d)
    elif fmt == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(fresh_base(item), d).eval()
        enc = model.encode_image if item["base"] == "open_clip" else hf_features(model)
        results[label + ":PeftModel.from_pretrained"] = logits_of(enc, d)
        merged = model.merge_and_unload().eval()
        enc = merged.encode_image if item["base"] == "open_clip" else hf_features(merged)
        results[label + ":merge_and_unload"] = logits_of(enc, d)
        kwargs["base_model"] = fresh_base(item)
    elif fmt == "onnx":
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(str(Path(d) / "detector.onnx"), full_check=True)
        s = ort.InferenceSession(str(Path(d) / "detector.onnx"), providers=["CPUExecutionProvider"])
        results["onnx:onnxruntime"] = s.run(["logits"], {"pixels": x})[0]
        single = [s.run(["logits"], {"pixels": x[i : i + 1]})[0] for i in range(len(x))]
        results["onnx:onnxruntime-batch-1"] = np.concatenate(single)
    elif fmt == "pt2":
        import torch

        module = torch.export.load(str(Path(d) / "detector.pt2")).module()
        with torch.no_grad():
            results["pt2:torch.export.load"] = module(torch.from_numpy(x)).numpy()
    loader = runpy.run_path(str(Path(d) / "load_detector.py"))
    detector = loader["load_detector"](**kwargs)
    results[label + ":load_detector.py"] = detector(x)
    if plan.get("images"):  # the loader's own preprocessing, from image files
        pixels = np.stack([loader["preprocess"](p) for p in plan["images"]])
        results[label + ":load_detector.py-images"] = detector(pixels)
        if not kwargs:  # (the command line builds the peft base model itself)
            with contextlib.redirect_stdout(io.StringIO()) as text:
                assert loader["main"](plan["images"]) == 0
            results[label + ":load_detector.py-cli"] = np.array(
                [float(line.rsplit(",", 1)[1]) for line in text.getvalue().split()]
            )

np.savez(plan["out"], **results)
print(json.dumps(sorted(results)))
"""


def _images(bench: Path) -> list[str]:
    return sorted(os.fspath(p) for p in (bench / "test").rglob("*.png"))


def _pixels(bundle: Any, images: list[str], n_random: int, size: int) -> torch.Tensor:
    """The test images through dgsnet's own evaluation transform, and random tensors."""
    from PIL import Image

    real = [bundle.eval_transform(Image.open(p)) for p in images]
    g = torch.Generator().manual_seed(11)
    rand = [torch.randn(3, size, size, generator=g) for _ in range(n_random)]
    return torch.stack([*real, *rand]).float()


def _base_item(
    source: Path, spec: str | None, work: Path, peft_base: str, model: str | None
) -> dict[str, Any]:
    """How the subprocess builds the peft base model: the recorded Hugging Face folder, the
    CLIPModel equivalent of the open_clip base (converted and saved here), or the open_clip
    model of the spec from its config and pristine weights (written here)."""
    from dgsnet.export import load_source
    from dgsnet.export.hf import converted_clipmodel
    from dgsnet.export.open_clip import config_from_modules
    from dgsnet.models import build_model

    if spec is not None and spec.startswith("hf:"):
        return {"base": "hf", "base_path": spec[3:]}
    if peft_base == "hf":
        folder = work / "converted-base"
        converted_clipmodel(load_source(source, model=model), merged=False).save_pretrained(folder)
        return {"base": "hf", "base_path": os.fspath(folder)}
    bundle = build_model(spec or "tiny:32")
    if spec is not None and spec.startswith("local-dir:"):
        cfg = json.loads((Path(spec[10:]) / "open_clip_config.json").read_text())["model_cfg"]
    else:
        cfg = config_from_modules(bundle.model)
    weights = work / "base.safetensors"
    save_tensors(weights, bundle.model.state_dict())
    return {
        "base": "open_clip",
        "base_name": "dgs-test-base",
        "base_cfg": cfg,
        "base_weights": os.fspath(weights),
    }


def _roundtrip(
    source: Path,
    formats: tuple[str, ...],
    work: Path,
    bench: Path,
    model: str | None = None,
    files: bool = True,
) -> dict[str, Any]:
    """Export every format, run the loader subprocess, return the logits by method and the
    wrapper's own logits."""
    wrapper, bundle = load_trained(source, model=model)
    size = bundle.image_size or 32
    images = _images(bench) if files else []
    pixels = _pixels(bundle, images, n_random=3, size=size)
    want = wrapper.predict(pixels).double().numpy()
    np.save(work / "pixels.npy", pixels.numpy())
    spec = str(bundle.spec)
    if spec.startswith("local-dir:"):  # an imported released run: its stored base model
        spec = spec
    manifests, items = {}, []
    for label in formats:
        fmt, _, peft_base = label.partition("@")  # "peft@hf": the adapter of the CLIPModel
        options = {"peft_base": peft_base} if peft_base else {}
        manifest = export(source, fmt, work / label, model=model, **options)
        manifests[label] = manifest
        item = {
            "format": fmt,
            "label": label,
            "dir": os.fspath(work / label),
            "name": f"dgs-export-{fmt}",
        }
        if fmt == "peft":
            item.update(_base_item(source, spec, work, peft_base, model))
        items.append(item)
    plan = {
        "pixels": os.fspath(work / "pixels.npy"),
        "out": os.fspath(work / "out.npz"),
        "work": os.fspath(work),
        "items": items,
        "images": images,
    }
    (work / "plan.json").write_text(json.dumps(plan))
    run_without_dgsnet(LOADER, os.fspath(work / "plan.json"), cwd=work)
    got = dict(np.load(work / "out.npz"))
    n_img = len(images)
    return {
        "want": want,
        "got": got,
        "manifests": manifests,
        "n_images": n_img,
        "wrapper": wrapper,
        "bundle": bundle,
        "images": images,
    }


def _scores(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64).reshape(-1)))


def _check(result: dict[str, Any], fmt: str) -> dict[str, float]:
    """Every method of `fmt` matches the wrapper; returns the largest score difference each."""
    want, n_img = result["want"], result["n_images"]
    methods = {k: v for k, v in result["got"].items() if k.startswith(fmt + ":")}
    fmt = fmt.partition("@")[0]
    assert len(methods) >= 2, sorted(result["got"])
    tol = TOL_ONNX if fmt == "onnx" else TOL
    diffs = {}
    for method, logits in methods.items():
        if method.endswith("-cli"):  # printed with 6 decimals
            d = float(np.abs(logits - _scores(want[:n_img])).max())
            assert d <= 5e-7 + TOL, (method, d)
        elif method.endswith("-images"):
            d = float(np.abs(_scores(logits) - _scores(want[:n_img])).max())
            assert d <= tol, (method, d)
        else:
            assert logits.shape == want.shape, (method, logits.shape)
            d = float(np.abs(_scores(logits) - _scores(want)).max())
            assert d <= tol, (method, d)
            assert float(np.abs(logits - want).max()) <= 10 * tol, method
        diffs[method] = d
    # the scores differ from image to image (a constant detector would pass trivially)
    assert float(np.ptp(_scores(want))) > 1e-3
    return diffs


# -- the sources ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oc_result(oc_run: Path, bench: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("rt-oc")
    return _roundtrip(oc_run, ("open_clip", "hf", "peft", "peft@hf", "onnx", "pt2"), work, bench)


@pytest.fixture(scope="module")
def hf_result(hf_run: Path, bench: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("rt-hf")
    return _roundtrip(hf_run, ("hf", "open_clip", "peft", "onnx", "pt2"), work, bench)


@pytest.fixture(scope="module")
def std_result(standard_ckpt: Path, bench: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("rt-std")
    return _roundtrip(standard_ckpt, ("open_clip", "peft"), work, bench, model="tiny:32")


@pytest.fixture(scope="module")
def released_result(released_run: Path, bench: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("rt-rel")
    # patch selection needs dgsnet: the subprocess gets dgsnet-preprocessed pixels only
    return _roundtrip(
        released_run, ("open_clip", "hf", "peft", "onnx", "pt2"), work, bench, files=False
    )


@pytest.mark.parametrize("fmt", ["open_clip", "hf", "peft", "peft@hf", "onnx", "pt2"])
def test_open_clip_run_every_format(oc_result, fmt):
    diffs = _check(oc_result, fmt)
    check = oc_result["manifests"][fmt]["check"]
    assert check["max_abs_score_diff"] <= check["tolerance"]
    if not fmt.startswith("peft"):  # image files through the loader's command line
        assert any(k.endswith("-cli") for k in diffs)


@pytest.mark.parametrize("fmt", ["hf", "open_clip", "peft", "onnx", "pt2"])
def test_hf_run_every_format(hf_result, fmt):
    _check(hf_result, fmt)


@pytest.mark.parametrize("fmt", ["open_clip", "peft"])
def test_standard_scaling_and_mlp_lora(std_result, fmt):
    _check(std_result, fmt)
    if fmt == "peft":
        cfg = json.loads((std_result["manifests"]["peft"].path / "adapter_config.json").read_text())
        assert any(t.endswith("mlp.c_fc") for t in cfg["target_modules"])
        assert any(t.endswith(".attn") for t in cfg["target_modules"])


@pytest.mark.parametrize("fmt", ["open_clip", "hf", "peft", "onnx", "pt2"])
def test_imported_released_checkpoint_every_format(released_result, fmt):
    _check(released_result, fmt)
    if fmt == "open_clip":
        # QuickGELU and the 64-wide heads of the released CLIP come from its stored config
        cfg = json.loads(
            (released_result["manifests"][fmt].path / "open_clip_config.json").read_text()
        )["model_cfg"]
        assert cfg["quick_gelu"] is True and cfg["vision_cfg"]["head_width"] == 64


def test_open_clip_file_has_stock_keys(oc_result):
    """The state dict has the names and shapes of an unmodified open_clip model."""
    from safetensors.torch import load_file

    from dgsnet.models import build_model

    path = oc_result["manifests"]["open_clip"].path / "open_clip_model.safetensors"
    exported = load_file(os.fspath(path))
    stock = build_model("tiny:32").model.state_dict()
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        k: tuple(v.shape) for k, v in stock.items()
    }
    assert not any("lora" in k or "q_proj" in k for k in exported)
    # the text tower is untouched; the adapted image tower is not
    assert torch.equal(exported["token_embedding.weight"], stock["token_embedding.weight"])
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(exported[key], stock[key])
