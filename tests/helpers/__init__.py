"""Shared helpers of the test suite: tiny models, wrapper builders, image trees, error measures.

Test modules import from here (``from tests.helpers import build, batch``), never from one
another. Fixtures (thread pinning) live in ``tests/conftest.py``.
"""

from __future__ import annotations

from tests.helpers.errors import (
    assert_close_rows,
    f64,
    low_precision_tol,
    max_rel_error,
    rel_norm_errors,
)
from tests.helpers.images import (
    BENCH_CAPTIONS,
    make_bench,
    make_tree,
    write_image,
    write_random_image,
    write_truncated,
)
from tests.helpers.models import (
    CAPTIONS,
    batch,
    build,
    grads,
    hf_tokenizer,
    make_lora_nonzero,
    open_clip_tokenizer,
    openai_clip_tokenize,
    tiny_hf_clip,
    tiny_open_clip,
    tiny_openai_clip,
    write_tiny_hf_base,
    zero_grads,
)
from tests.helpers.reference import reference_step

__all__ = [
    "BENCH_CAPTIONS",
    "CAPTIONS",
    "assert_close_rows",
    "batch",
    "build",
    "f64",
    "grads",
    "hf_tokenizer",
    "low_precision_tol",
    "make_bench",
    "make_lora_nonzero",
    "make_tree",
    "max_rel_error",
    "open_clip_tokenizer",
    "openai_clip_tokenize",
    "reference_step",
    "rel_norm_errors",
    "tiny_hf_clip",
    "tiny_openai_clip",
    "tiny_open_clip",
    "write_image",
    "write_random_image",
    "write_tiny_hf_base",
    "write_truncated",
    "zero_grads",
]
