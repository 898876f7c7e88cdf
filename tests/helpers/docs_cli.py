"""`python -m tests.helpers.docs_cli ARGS...`: the `dgsnet` command as the docs tests run it,
with every named open_clip model replaced by the tiny random one (see `docs_env`)."""

from __future__ import annotations

import sys

from tests.helpers.docs_env import substitute_tiny_models

if __name__ == "__main__":
    substitute_tiny_models()
    from dgsnet.cli import main

    sys.exit(main())
