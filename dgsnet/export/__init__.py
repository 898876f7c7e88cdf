"""Export a trained detector so that it runs without dgsnet.

`export(source, format, out)` (and `dgsnet export RUN_DIR --format FORMAT -o OUT`) reads a
`dgsnet train` run folder, a `DGSWrapper.save_pretrained` folder, a run folder written by
`dgsnet import-released`, a `hf-hub:` id, or a wrapper in memory, and writes one of:

* `open_clip`: the CLIP with the LoRA merged and q/k/v fused back into `in_proj_weight`,
  for `open_clip.create_model(name, pretrained=FILE)` (a `CLIPModel` base is converted);
* `hf`: a merged `CLIPModel` / `SiglipModel` folder for `AutoModel.from_pretrained(OUT)`
  (a plain open_clip ViT base is converted, `convert`);
* `peft`: the LoRA as a peft adapter for `peft.PeftModel.from_pretrained(base_model, OUT)`;
* `onnx`: the whole detector, pixels in, logits out, for `onnxruntime.InferenceSession`;
* `pt2`: the whole detector as a `torch.export` program, for `torch.export.load(FILE)`.

Every folder also holds the image head (`head.safetensors`, `head.json`), the
preprocessing (`preprocessing.json`), a loader that needs no dgsnet (`load_detector.py`)
and a manifest (`export.json`) with the check of the artefact against
`DGSWrapper.predict`. One module per format; `merge` folds the LoRA in, `source` loads what
an export starts from. `docs/deploy.md` has the loader code of each format.
"""

from .api import FORMATS, ExportResult, export
from .merge import fuse_attention, merged_copy, merged_linear, pristine_copy
from .preprocessing import PREPROCESSING_NAME, describe_preprocessing
from .source import ExportError, ExportSource, load_source

__all__ = [
    "FORMATS",
    "PREPROCESSING_NAME",
    "ExportError",
    "ExportResult",
    "ExportSource",
    "describe_preprocessing",
    "export",
    "fuse_attention",
    "load_source",
    "merged_copy",
    "merged_linear",
    "pristine_copy",
]
