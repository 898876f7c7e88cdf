"""Read the checkpoints published with the released DGS-Net code (HorizonTEL/DGS-Net).

The released training script saves each stage with a plain `torch.save(model.state_dict())`:

* `model_epoch_step1.pth` (stage 1): `clip_model_frozen.*` (the OpenAI CLIP) and
  `img_frozen_fc.{weight,bias}` (the teacher head, a linear probe on frozen features);
* `model_epoch_step2.pth` (stage 2): `clip_model.*` (the student CLIP, whose vision
  attention is split into `attn.{q,k,v}_proj.{weight,bias,w_lora_A,w_lora_B}` and
  `attn.proj.{weight,bias}`), `clip_model_frozen.clip_model_frozen.*` (the pristine CLIP,
  the teacher), `clip_model_frozen.img_frozen_fc.*` (the teacher head), `img_fc.*` and
  `text_fc.*` (the image and text heads).

The LoRA layers (the public CLIP-LoRA code, `loralib/layers.py`) compute
`W x + b + scaling * dropout(x) A^T B^T` with `scaling = alpha / sqrt(r)` on q, k and v of
every vision block. When such a model is switched to eval mode the layers add
`scaling * B A` into `weight` in place, so a file saved afterwards holds *merged* q/k/v
weights. The pristine teacher in the same file tells the cases apart exactly: unmerged
student weights equal the teacher's, merged ones differ by `scaling * B A` up to float
rounding. Both are handled (the base weights always come from the pristine copy) and
`ReleasedImport.merged` says which one was found.

Loading is safe: `torch.load(path, map_location="cpu", weights_only=True)`, never a full
unpickle. Every problem (a truncated file, an object that is not a tensor, an unknown or a
missing key, a shape that does not fit, a student that is not the teacher plus LoRA) raises
one `CheckpointError` naming the key.

Examples:
    The released file itself (no download of the OpenAI weights is needed):

    >>> from dgsnet.interop import load_released
    >>> dgs = load_released("model_epoch_step2.pth")  # doctest: +SKIP
    >>> dgs.released_import.merged, dgs.released_import.rank  # doctest: +SKIP
    (False, 6)
    >>> scores = dgs.predict(images).sigmoid()  # doctest: +SKIP
"""

from .building import load_released
from .layout import (
    RELEASED_ALPHA,
    RELEASED_DROPOUT,
    RELEASED_RANK,
    ReleasedCheckpoint,
    ReleasedImport,
)
from .reading import MAX_ALPHA, read_released, released_model_config
from .run_folder import import_released, remove_stale_staging, write_run_folder

__all__ = [
    "MAX_ALPHA",
    "RELEASED_ALPHA",
    "RELEASED_DROPOUT",
    "RELEASED_RANK",
    "ReleasedCheckpoint",
    "ReleasedImport",
    "import_released",
    "load_released",
    "read_released",
    "released_model_config",
    "remove_stale_staging",
    "write_run_folder",
]
