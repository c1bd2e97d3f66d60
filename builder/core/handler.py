"""The one handler every command (`builder`, `python -m client`, `python -m loadtests`) runs its body in."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from .errors import KitError

EXIT_ERROR = 2  # an error the user can fix (KitError); 1 stays for "ran, but something failed" (a gate, a variant)
EXIT_INTERRUPTED = 130


def run_command(command: Callable[[], int], verbose: bool = False, interrupted: str = "interrupted") -> int:
    """Run a command's body and return its exit code. A KitError prints `error: <message>` and `hint: <hint>` on
    stderr and gives EXIT_ERROR; Ctrl-C prints `interrupted` and gives EXIT_INTERRUPTED. With `verbose`, the
    traceback is printed first. Any other exception is a bug: it propagates with its traceback."""
    try:
        return command()
    except KitError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
