"""The admin key: what unlocks the administrative APIs (model repository, shared memory, trace, logging) of a
server the kit starts. Inference, health, metadata, model config and statistics stay open.

The server side (builder/serving/server.py) takes its key, in this order, from
  1. the environment variable TRITONKIT_ADMIN_KEY,
  2. a file: `--admin-key-file PATH`, or the environment variable TRITONKIT_ADMIN_KEY_FILE,
  3. else a new random key for this run (`secrets.token_urlsafe(32)`), written to `key_file_for(port)` for its
     HTTP and its gRPC port, mode 0600 in a 0700 folder, removed when the server stops.
Triton checks it as the value of the HTTP request header ADMIN_HEADER; over gRPC it expects the metadata key with
its own prefix, GRPC_ADMIN_HEADER (2.51 answers a call without it: UNAVAILABLE "This protocol is restricted,
expecting header 'triton-grpc-protocol-tritonkit-admin-key'").

A caller (`find_admin_key(url)`) looks in the same places: the variable, the file variable, then, for a loopback
URL only (a key is never sent to another machine unasked), the generated key file of the URL's port.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import stat

from builder.core.files import atomic_write

from .errors import ClientError

ADMIN_HEADER = "tritonkit-admin-key"  # lowercase: gRPC metadata keys must be
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
ADMIN_KEY_ENV = "TRITONKIT_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "TRITONKIT_ADMIN_KEY_FILE"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class AdminKeyError(ClientError):
    """An admin key file is missing, empty or readable by others."""


def key_dir() -> pathlib.Path:
    """Where generated keys go: $XDG_RUNTIME_DIR/tritonkit (per user, in memory), else ~/.cache/tritonkit."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (pathlib.Path(runtime) if runtime else pathlib.Path.home() / ".cache") / "tritonkit"


def key_file_for(port: int) -> pathlib.Path:
    """The generated key file of the server listening (HTTP or gRPC) on `port` of this machine."""
    return key_dir() / f"admin-key-{port}"


def read_key_file(path: str | os.PathLike) -> str:
    """The key in `path` (surrounding whitespace stripped). Raises AdminKeyError if it is missing, empty, or
    readable or writable by group or others (as ssh refuses such a private key)."""
    path = pathlib.Path(path)
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except OSError as e:
        raise AdminKeyError(f"cannot read the admin key file {path}: {e.strerror}",
                            hint="pass the file the server was started with (--admin-key-file)") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminKeyError(f"the admin key file {path} is accessible to other users (mode {stat.S_IMODE(mode):o})",
                            hint=f"chmod 600 {path}")
    if not key:
        raise AdminKeyError(f"the admin key file {path} is empty", hint="write the key into it (one line)")
    return key


def write_key_file(path: pathlib.Path, key: str) -> None:
    """Write `key` to `path`, created with mode 0600 (never readable by others, not even for a moment), in a
    folder of mode 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, key + "\n", mode=0o600)


def admin_headers(protocol: str, key: str | None) -> dict | None:
    """The header (`http`) or gRPC metadata (`grpc`) that carries `key`; None without a key."""
    if not key:
        return None
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


def new_key() -> str:
    return secrets.token_urlsafe(32)


def configured_key(key_file: str | os.PathLike | None = None) -> tuple[str, str] | None:
    """(key, where it came from) from TRITONKIT_ADMIN_KEY, `key_file` or TRITONKIT_ADMIN_KEY_FILE; None if
    none is set. Raises AdminKeyError for a bad file."""
    if os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV].strip(), f"${ADMIN_KEY_ENV}"
    path = key_file or os.environ.get(ADMIN_KEY_FILE_ENV)
    if path:
        return read_key_file(path), str(path)
    return None


def find_admin_key(url: str, key_file: str | os.PathLike | None = None) -> str | None:
    """The key a caller of the server at `url` (`grpc://h:p`, `http://h:p` or `h:p`) sends, or None: see the
    module docstring for the order."""
    configured = configured_key(key_file)
    if configured:
        return configured[0]
    rest = url.partition("://")[2] or url
    host, _, port = rest.rstrip("/").rpartition(":")
    if host in LOOPBACK_HOSTS and port.isdigit() and key_file_for(int(port)).is_file():
        try:
            return read_key_file(key_file_for(int(port)))
        except AdminKeyError:
            return None
    return None
