"""The Triton model repository: `<repository>/<model>/config.pbtxt` + `<version>/model.onnx`, written atomically.

A model directory appears complete or not at all: everything is staged in a hidden folder beside the repository
(same filesystem, outside Triton's view) and moved in with rename(2). A rebuild adds a new version directory, then
swaps config.pbtxt, then removes older versions, so a running server keeps serving the version it loaded.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from ..core.errors import RepositoryError
from ..core.files import atomic_write
from ..core.names import MAX_NAME, SERVED_NAME, legacy_name
from .tritonconfig import parse_text, warmup_files


def write_model(repository: pathlib.Path, name: str, config_text: str, onnx_file: pathlib.Path | None = None,
                files: dict[str, pathlib.Path] | None = None) -> pathlib.Path:
    """Install `config_text` as model `name` with `onnx_file` as the version's model.onnx, and `files` (name in the
    version directory -> source; a Python model's model.py, an ensemble's nothing); return the version directory."""
    if not SERVED_NAME.match(name) or len(name) > MAX_NAME:
        raise RepositoryError(f"`{name}` is not a valid model name (letters, digits and `_ . -` inside, at most "
                              f"{MAX_NAME} characters)", hint="name models with builder.pipeline.names.model_name")
    config = parse_text(config_text, where=f"{name}/config.pbtxt")  # never write a config the server would reject
    model_files = warmup_files(config)  # {path in the model directory: bytes}
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
        for relative, content in model_files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(content)
        (staging / "config.pbtxt").write_text(config_text)
        if not target.exists():
            os.rename(staging, target)
            return target / str(version)
        os.rename(staging / str(version), target / str(version))
        for relative in model_files:  # before the config that names them
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, target / relative)
        os.replace(staging / "config.pbtxt", target / "config.pbtxt")
        for old in versions(target):
            if old != version:
                shutil.rmtree(target / str(old), ignore_errors=True)
        return target / str(version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_config(model_dir: pathlib.Path, config) -> pathlib.Path:
    """Replace the model's config.pbtxt with `config` (a ModelConfig message) atomically: a reader (Triton's
    polling, a reload) sees the old file or the new one. Checked as write_model checks: never a config the server
    would reject."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    path = pathlib.Path(model_dir) / "config.pbtxt"
    parse_text(text, where=str(path))
    atomic_write(path, text)
    return path


def versions(model_dir: pathlib.Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def list_models(repository: pathlib.Path) -> list[str]:
    """Names of the model directories (those with a config.pbtxt) in the repository."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def check_no_legacy_names(repository: pathlib.Path) -> None:
    """Raise RepositoryError if the repository holds a model named with `+` (built before model names became
    URL-safe): standard HTTP clients cannot reach it (they send `%2B`, which Triton 2.51 does not decode)."""
    legacy = [name for name in list_models(repository) if "+" in name]
    if legacy:
        model, _, variant = legacy[0].rpartition("_")
        raise RepositoryError(
            f"{repository} holds model(s) named with `+`, which standard HTTP clients cannot reach: "
            f"{', '.join(legacy)}",
            hint=f"rebuild them (combinations are now served as `{legacy[0].replace('+', '-')}`), "
                 f"e.g. `builder build --model {model} --variant {variant}`, which also removes the old folder")


def remove_legacy(repository: pathlib.Path, model: str, variant: str) -> pathlib.Path | None:
    """Remove the `+`-named folder that `variant` of `model` had before names became URL-safe; return it if
    removed."""
    old = repository / legacy_name(model, variant)
    if "+" not in variant or not (old / "config.pbtxt").is_file():
        return None
    shutil.rmtree(old)
    return old


def latest_model_file(repository: pathlib.Path, name: str) -> pathlib.Path:
    found = versions(repository / name)
    if not found:
        raise RepositoryError(f"model `{name}` is not in {repository}", hint=f"build it: `builder build` (models there: {', '.join(list_models(repository)) or 'none'})")
    return repository / name / str(found[-1]) / "model.onnx"
