"""The public API a user's model module may import: the names in `__all__`, imported from here.

A spec's `factory` and `data` functions (docs/own-model.md) run inside the kit and may use these. They keep their
names and meaning across releases; when one moves, its old import path keeps working for a release with a
DeprecationWarning that names the new one (builder/data.py). Everything else under `builder` is internal and may
move without notice.

  Split          builder.core.data      a data split: inputs (name -> array, batch on axis 0) and integer labels
  trim_padding   builder.core.data      cut right padding of a batch to its longest example
  read_split     builder.core.artifacts read a cached split (`<artifacts>/<model>/data/<split>.npz`)
  tokenizer_path builder.core.artifacts where a text model's factory writes its tokenizer.json
  BuilderError   builder.core.errors    the base of the errors a factory or data function may raise (message + hint)
  ConfigError    builder.core.errors    a spec or a value in it is wrong
  DataError      builder.core.errors    a data file is wrong: name the file, the row and what
"""

from .core.artifacts import read_split, tokenizer_path
from .core.data import Split, trim_padding
from .core.errors import BuilderError, ConfigError, DataError

__all__ = ["Split", "trim_padding", "read_split", "tokenizer_path", "BuilderError", "ConfigError", "DataError"]
