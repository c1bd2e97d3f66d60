"""The one error hierarchy of the builder. The library raises; only the CLI prints and exits."""


class BuilderError(Exception):
    """An error the user can fix. `hint` says how."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


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


def unknown_name(kind: str, name: str, known, error=ConfigError, hint: str | None = None) -> BuilderError:
    """An error for a name that is not one of `known`, with the known ones and the closest match."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"did you mean `{close[0]}`? " if close else ""
    return error(f"unknown {kind} `{name}`", hint=f"{guess}known: {', '.join(known) or '(none)'}" + (f"; {hint}" if hint else ""))
