"""`python -m dgsnet`: the `dgsnet` command line (see `dgsnet.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
