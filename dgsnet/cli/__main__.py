"""`python -m dgsnet.cli` (and `torchrun ... -m dgsnet.cli`): the `dgsnet` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
