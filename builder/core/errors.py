"""The one error hierarchy of the kit, and the one handler every command uses to print it.

The library raises; only a command prints and exits. `KitError` is the base of the builder's errors (`BuilderError`
and its subclasses here), the artifacts store's (`ArtifactsError`) and the client's (`client.errors.ClientError`),
so one `except KitError` in `run_command` serves `builder`, `python -m client` and `python -m loadtests`.
"""

from __future__ import annotations

import difflib
import sys
import traceback
from typing import Callable

EXIT_ERROR = 2  # an error the user can fix (KitError); 1 stays for "ran, but something failed" (a gate, a variant)
EXIT_INTERRUPTED = 130


class KitError(Exception):
    """An error the user can fix. `hint` says how."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class BuilderError(KitError):
    """An error of the builder: its spec, export, variants, repository or server."""


class ConfigError(BuilderError):
    """A model spec (YAML) or a command-line value is wrong."""


class ExportError(BuilderError):
    """torch -> ONNX failed, or the ONNX model does not match PyTorch."""


class RepositoryError(BuilderError):
    """The Triton model repository or a model config is wrong."""


class ServeError(BuilderError):
    """The embedded Triton server could not start or serve."""


class VariantError(BuilderError):
    """A variant could not be built."""


class ArtifactsError(BuilderError):
    """A build record or a cached data split is missing or unreadable."""


def unknown_name(kind: str, name: str, known, error=ConfigError, hint: str | None = None) -> KitError:
    """An error for a name that is not one of `known`, with the known ones and the closest match."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"did you mean `{close[0]}`? " if close else ""
    return error(f"unknown {kind} `{name}`", hint=f"{guess}known: {', '.join(known) or '(none)'}" + (f"; {hint}" if hint else ""))


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
