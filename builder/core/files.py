"""The one atomic write of the project: every file the kit writes that a reader may meet half-written (records,
caches, config.pbtxt, results, key files) goes through it."""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Callable


def atomic_write(path: pathlib.Path, content: str | bytes | Callable, mode: int = 0o644) -> None:
    """Replace `path` with `content` atomically: a uniquely named file beside it, then `os.replace`; a reader sees
    the old file or the new one, never half of one. `content` is text, bytes, or a function that writes into the
    binary file it is given (e.g. `torch.save`, `np.savez`). `mode`: the file's permissions from its creation on
    (0o600 for a secret: never readable by others, not even for a moment), less the umask. The one atomic write
    of the project."""
    path = pathlib.Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            elif isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
