"""Data toolkit: benchmark folder layouts, caption files and generation, transforms.

Examples:
    >>> from dgsnet.data import DetectionFolder, PatchSelection, collate        # doctest: +SKIP
    >>> ds = DetectionFolder("AIGIBench/train", transform=PatchSelection(flip=True),
    ...                      captions="auto")                                  # doctest: +SKIP

See `docs/datasets.md` and `docs/captions.md`.
"""

from ..errors import CaptionError, CaptionFallbackWarning, CorruptImageError, DatasetError
from ._common import IMAGE_EXTENSIONS, is_image_file, load_image
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
from .datasets import (
    FAKE_DIR,
    REAL_DIR,
    Batch,
    ClassFolder,
    DetectionFolder,
    GenImageFolder,
    LabeledImageDataset,
    Sample,
    collate,
    detect_layout,
    list_images,
    open_dataset,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Degrade,
    PatchSelection,
    RandomHorizontalFlip,
    default_transform,
    spectral_entropy,
)

__all__ = [
    # errors and constants
    "DatasetError",
    "CorruptImageError",
    "CaptionError",
    "CaptionFallbackWarning",
    "IMAGE_EXTENSIONS",
    "REAL_DIR",
    "FAKE_DIR",
    # datasets
    "Sample",
    "Batch",
    "collate",
    "LabeledImageDataset",
    "DetectionFolder",
    "GenImageFolder",
    "ClassFolder",
    "detect_layout",
    "open_dataset",
    "list_images",
    "is_image_file",
    "load_image",
    # captions
    "CaptionStore",
    "load_captions",
    "read_caption_file",
    "save_captions",
    "caption_file_candidates",
    "find_caption_file",
    "class_name_caption",
    "NEUTRAL_CAPTION",
    "CATEGORY_TEMPLATE",
    "Captioner",
    "TemplateCaptioner",
    "BlipCaptioner",
    "CaptionReport",
    "generate_captions",
    # transforms
    "PatchSelection",
    "spectral_entropy",
    "Degrade",
    "RandomHorizontalFlip",
    "default_transform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]
