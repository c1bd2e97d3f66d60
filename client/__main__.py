"""`python -m client ...`: the same commands as `builder infer|models|metadata` (client/commands.py)."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
