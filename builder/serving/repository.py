"""The Triton model repository: `<repository>/<model>/config.pbtxt` + `<version>/model.onnx`, written atomically.

A model directory appears complete or not at all: everything is staged in a hidden folder beside the repository
(same filesystem, outside Triton's view) and moved in with rename(2). A rebuild adds a new version directory, then
swaps config.pbtxt, then removes older versions, so a running server keeps serving the version it loaded.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile

from ..core.errors import RepositoryError
from .tritonconfig import parse_text

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def write_model(repository: pathlib.Path, name: str, config_text: str, onnx_file: pathlib.Path | None = None,
                files: dict[str, pathlib.Path] | None = None) -> pathlib.Path:
    """Install `config_text` as model `name` with `onnx_file` as the version's model.onnx, and `files` (name in the
    version directory -> source; a Python model's model.py, an ensemble's nothing); return the version directory."""
    if not MODEL_NAME.match(name):
        raise RepositoryError(f"`{name}` is not a valid model name (letters, digits, `_ . + -`)")
    parse_text(config_text, where=f"{name}/config.pbtxt")  # never write a config the server would reject
    repository.mkdir(parents=True, exist_ok=True)
    target = repository / name
    version = max(versions(target), default=0) + 1
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=repository.parent))
    # mkdtemp makes it 0700; a server running as another user (the Triton image's uid 1000) must read the model
    staging.chmod(0o755)
    try:
        (staging / str(version)).mkdir()
        for target_name, source in (({"model.onnx": onnx_file} if onnx_file else {}) | (files or {})).items():
            shutil.copyfile(source, staging / str(version) / target_name)
        (staging / "config.pbtxt").write_text(config_text)
        if not target.exists():
            os.rename(staging, target)
            return target / str(version)
        os.rename(staging / str(version), target / str(version))
        os.replace(staging / "config.pbtxt", target / "config.pbtxt")
        for old in versions(target):
            if old != version:
                shutil.rmtree(target / str(old), ignore_errors=True)
        return target / str(version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def versions(model_dir: pathlib.Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def list_models(repository: pathlib.Path) -> list[str]:
    """Names of the model directories (those with a config.pbtxt) in the repository."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def latest_model_file(repository: pathlib.Path, name: str) -> pathlib.Path:
    found = versions(repository / name)
    if not found:
        raise RepositoryError(f"model `{name}` is not in {repository}", hint=f"build it: `builder build` (models there: {', '.join(list_models(repository)) or 'none'})")
    return repository / name / str(found[-1]) / "model.onnx"
