"""The `pt2` format: the whole detector as a `torch.export` program (`detector.pt2`).

The same detector module as the ONNX export (merged image tower, feature normalisation when
used, image head), captured with `torch.export.export` with a dynamic batch dimension and
written with `torch.export.save`. `torch.export.load("detector.pt2").module()` gives back a
module `pixels (B, 3, H, W) -> logits (B, num_classes)` that needs torch only. The program
can be compiled further (`torch.compile`, AOTInductor) where torch supports it.

A `.pt2` archive stores plain tensors as raw bytes, but `torch.export.load` unpickles
entries that were saved as tensor subclasses: load `.pt2` files from sources you trust only.
"""

from __future__ import annotations

import os
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
from .source import ExportSource

__all__ = ["PT2_NAME", "export_pt2"]

PT2_NAME = "detector.pt2"


def export_pt2(
    src: ExportSource,
    out: str | os.PathLike[str],
    *,
    check: bool = True,
    tolerance: float = 1e-5,
) -> dict[str, Any]:
    """Write the `torch.export` program of `src` into `out` (see the module docstring).

    Args:
        src: the detector (`dgsnet.export.load_source`).
        out: the folder to create (must not exist).
        check: load the program with `torch.export.load` and compare its scores with the
            wrapper's.
        tolerance: the largest score difference the check accepts.

    Returns:
        The manifest (`export.json`).
    """
    det = build_detector(src)
    example = probe_images(src, 2)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(det, (example,), dynamic_shapes={"pixels": {0: batch}})
    with staged_folder(out) as tmp:
        torch.export.save(program, os.fspath(tmp / PT2_NAME))
        del program, det
        write_head(tmp, src.wrapper)
        result = None
        if check:
            module = torch.export.load(os.fspath(tmp / PT2_NAME)).module()

            def run(x: Tensor) -> Tensor:
                out: Tensor = module(x)
                return out

            result = check_artefact(src, run, tolerance=tolerance, what="the .pt2 program")
        return write_common(
            tmp,
            src,
            "pt2",
            loader=loader_text("pt2"),
            check=result,
            extra={"pt2": {"input": "pixels", "output": "logits", "dynamic_batch": True}},
        )
