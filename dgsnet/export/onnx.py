"""The `onnx` format: the whole detector (pixels in, logits out) as one ONNX model.

The detector is the merged image tower (LoRA folded in, `dgsnet.export.merge`), the feature
normalisation when the run used it, and the image head, exported with PyTorch's
`torch.onnx.export(..., dynamo=True)` (the `torch.export`-based exporter, which writes
through onnxscript) at opset `OPSET`:

* input `pixels`: float32 `(batch, 3, H, W)`, the batch dimension dynamic;
* output `logits`: float32 `(batch, num_classes)`.

The file is checked with `onnx.checker.check_model(..., full_check=True)` and run with
onnxruntime on probe images against `DGSWrapper.predict`. Models over about 1.5 GB of
weights keep them in a side file `detector.onnx.data` (ONNX's external data; a single ONNX
file is limited to 2 GB). Needs the `export` extra: `pip install 'dgsnet[export]'`
(onnx, onnxruntime, onnxscript) and torch 2.6 or later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .common import (
    build_detector,
    check_artefact,
    probe_images,
    staged_folder,
    write_common,
    write_head,
)
from .loaders import loader_text
from .source import ExportError, ExportSource

__all__ = ["ONNX_NAME", "OPSET", "export_onnx"]

ONNX_NAME = "detector.onnx"
#: the ONNX opset the detector is written at
OPSET = 20
#: weights above this many bytes go to an external data file
_EXTERNAL_BYTES = 1_500_000_000


def _require() -> None:
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"the onnx format needs {', '.join(missing)}: pip install 'dgsnet[export]'"
        )
    if "dynamo" not in torch.onnx.export.__code__.co_varnames:
        raise ExportError(f"the onnx format needs torch 2.6 or later, found {torch.__version__}")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def export_onnx(
    src: ExportSource,
    out: str | os.PathLike[str],
    *,
    check: bool = True,
    tolerance: float = 1e-4,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write the ONNX export of `src` into `out` (see the module docstring).

    Args:
        src: the detector (`dgsnet.export.load_source`).
        out: the folder to create (must not exist).
        check: run the file with onnxruntime and compare its scores with the wrapper's.
        tolerance: the largest score difference the check accepts.
        opset: the ONNX opset to write.

    Returns:
        The manifest (`export.json`).

    Raises:
        ExportError: onnx, onnxruntime or onnxscript is missing, or the check fails.
    """
    _require()
    import onnx

    det = build_detector(src)
    example = probe_images(src, 2)
    weight_bytes = sum(p.numel() * p.element_size() for p in det.parameters())
    external = weight_bytes > _EXTERNAL_BYTES
    with staged_folder(out) as tmp:
        program = torch.onnx.export(
            det,
            (example,),
            dynamo=True,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1)}},
            opset_version=opset,
            verbose=False,
        )
        if program is None:  # pragma: no cover - the dynamo exporter returns its program
            raise ExportError("torch.onnx.export returned no program")
        program.save(os.fspath(tmp / ONNX_NAME), external_data=external)
        del program, det
        onnx.checker.check_model(os.fspath(tmp / ONNX_NAME), full_check=True)
        write_head(tmp, src.wrapper)
        result = None
        if check:
            session = _session(tmp / ONNX_NAME)

            def run(x: Tensor) -> Tensor:
                return torch.from_numpy(session.run(["logits"], {"pixels": x.numpy()})[0])

            result = check_artefact(src, run, tolerance=tolerance, what="the ONNX model")
        return write_common(
            tmp,
            src,
            "onnx",
            loader=loader_text("onnx"),
            check=result,
            extra={
                "onnx": {
                    "opset": opset,
                    "input": "pixels",
                    "output": "logits",
                    "dynamic_batch": True,
                    "external_data": external,
                }
            },
        )
