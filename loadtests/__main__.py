"""`python -m loadtests ...`: the same commands as `builder load|report|plan|...` (loadtests/commands/)."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
