"""The `dgsnet` command line: `train`, `eval`, `predict`, `import-released`,
`caption`, `tsne`, `plot`, `demo`.

Run `dgsnet <command> --help` for the options and examples; `docs/cli.md` has the whole
story (output folder layout, resume semantics, `torchrun`, model specs).

One module per command (`train`, `eval`,
`predict`, `import_released`, `caption`,
`tsne`, `plot`, `demo`), each with
its options (`add_parser`) and `run(args)`; shared options, the DGS options derived from
`DGSConfig` and the `preset < --config < flags` layering in
`options`; the error contract in `errors`.

Errors caused by the input (a missing folder, an unreadable image, missing captions, a damaged
checkpoint, a bad option) are printed as `dgsnet: error: ...` and exit with status 2; a
non-finite loss exits with 1, an interrupted run with 130. `--debug` shows the traceback.
"""

from __future__ import annotations

from ..errors import UsageError
from .app import build_parser, main, train_settings
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "UsageError",
    "build_parser",
    "main",
    "train_settings",
]
