"""Captions for DGS-Net's text branch, in three modules re-exported here.

* `dgsnet.data.caption_files`: where caption JSON files live, reading and writing them;
* `dgsnet.data.caption_store`: `CaptionStore` (captions by image path, matched
  robustly) and the label-free fallback captions;
* `dgsnet.data.captioners`: `TemplateCaptioner`, `BlipCaptioner` and
  `generate_captions`.

This module keeps `from dgsnet.data.captions import ...` working; `dgsnet.data` exports
the same names. See `docs/captions.md`.
"""

from __future__ import annotations

from ..errors import CaptionError, CaptionFallbackWarning
from .caption_files import (
    caption_file_candidates,
    find_caption_file,
    read_caption_file,
    save_captions,
)
from .caption_store import (
    CATEGORY_TEMPLATE,
    NEUTRAL_CAPTION,
    CaptionStore,
    FallbackSpec,
    class_name_caption,
    load_captions,
)
from .captioners import (
    BlipCaptioner,
    Captioner,
    CaptionReport,
    TemplateCaptioner,
    generate_captions,
)

__all__ = [
    "CaptionError",
    "CaptionFallbackWarning",
    "CaptionStore",
    "Captioner",
    "TemplateCaptioner",
    "BlipCaptioner",
    "CaptionReport",
    "FallbackSpec",
    "NEUTRAL_CAPTION",
    "CATEGORY_TEMPLATE",
    "class_name_caption",
    "caption_file_candidates",
    "find_caption_file",
    "read_caption_file",
    "load_captions",
    "save_captions",
    "generate_captions",
]
