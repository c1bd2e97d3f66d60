"""Deprecated: the path a released README documented (`from builder.data import Split`). The names moved in the
restructure into builder.core; they still import from here, each with a DeprecationWarning that names its new
path. Import them from builder.api, the public API (builder/api.py)."""

import warnings

from .core import artifacts, data

# the names builder/data.py held before the move, and the module each lives in now
MOVED = {"Split": data, "trim_padding": data, "save_split": artifacts, "read_split": artifacts, "load_splits": artifacts}
PUBLIC = ("Split", "trim_padding", "read_split")  # also in builder.api


def __getattr__(name: str):
    # module __getattr__ (PEP 562): warns on every use, not only on the first import that fills sys.modules
    if name not in MOVED:
        raise AttributeError(f"module 'builder.data' has no attribute {name!r}")
    new = MOVED[name].__name__
    also = " (or from builder.api, the public API)" if name in PUBLIC else ""
    warnings.warn(f"builder.data.{name} moved to {new}.{name}: import it from {new}{also}", DeprecationWarning,
                  stacklevel=2)
    return getattr(MOVED[name], name)
