"""The one error hierarchy of the kit. The library raises; only a command prints and exits (core/handler.py).

`KitError` is the base of the builder's errors and of the client's (client/errors.py)."""


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


class DataError(BuilderError):
    """A user's data file is wrong. The message is one line: the file, the row and what is wrong."""


class ArtifactsError(BuilderError):
    """A build record or a cached data split is missing or unreadable."""


def unknown_name(kind: str, name: str, known, error=ConfigError, hint: str | None = None) -> BuilderError:
    """An error for a name that is not one of `known`, with the known ones and the closest match."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"did you mean `{close[0]}`? " if close else ""
    return error(f"unknown {kind} `{name}`", hint=f"{guess}known: {', '.join(known) or '(none)'}" + (f"; {hint}" if hint else ""))

