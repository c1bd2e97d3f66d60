"""Build one variant of a model: load -> transform -> export -> verify -> measure -> write to the Triton repository.

The build record (`<artifacts>/<model>/record.json`) lives outside the Triton repository so it never disturbs
loading; it holds, per variant, what was measured and the command and resolved config that reproduce it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import repository as repo
from .data import load_splits, trim_padding
from .evaluate import onnx_predictor, onnx_session, run_split, score
from .spec import ModelSpec, resolve_callable
from .tritonconfig import ServingConfig, build_config, to_text
from .variants import steps

VERIFY_EXAMPLES = 8


@dataclass(frozen=True)
class BuildContext:
    """What a variant step may use: the spec, the model's work folder (caches) and its cached data splits."""

    spec: ModelSpec
    workdir: pathlib.Path
    splits: dict


def model_name(spec: ModelSpec, variant: str) -> str:
    return f"{spec.name}_{variant}"


def build_variant(spec: ModelSpec, variant: str, repository: pathlib.Path, artifacts: pathlib.Path,
                  serving: ServingConfig = ServingConfig(), command: str = "",
                  progress: Callable[[str], None] = print) -> dict:
    """Build `variant` of `spec` into `repository`; return its entry of the build record (also written to disk)."""
    modules = steps(variant)
    workdir = artifacts / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def step(message: str) -> None:
        progress(f"[{spec.name}_{variant} {time.perf_counter() - started:6.1f}s] {message}")

    step("loading data splits")
    splits = load_splits(spec, workdir)
    context = BuildContext(spec, workdir, splits)
    step("loading model")
    model = resolve_callable(spec.factory, spec.source)(workdir)
    for module in modules:
        if module.STAGE == "torch":
            model = module.apply(model, context)

    out = workdir / variant
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    from .torch2onnx import export, verify

    verify_batch = splits[spec.validation_split].spread(VERIFY_EXAMPLES).inputs
    if spec.sequence_mask:
        verify_batch = trim_padding(verify_batch, spec.sequence_mask)
    step("exporting to ONNX")
    export(model, spec, example_batch(spec), onnx_path)
    step("checking ONNX Runtime against PyTorch")
    max_diff = verify(model, spec, onnx_path, verify_batch)
    for module in modules:
        if module.STAGE == "onnx":
            onnx_path = module.apply(onnx_path, context)

    step("measuring accuracy in ONNX Runtime")
    predict = onnx_predictor(onnx_session(onnx_path))
    accuracy = {name: score(spec.metric, run_split(predict, splits[name], spec.sequence_mask), splits[name].labels)
                for name in spec.evaluate}
    name = model_name(spec, variant)
    config = build_config(name, spec, serving)
    version_dir = repo.write_model(repository, name, to_text(config), onnx_path)
    step(f"wrote {version_dir}")

    entry = {
        "triton_model": name,
        "version_dir": str(version_dir),
        "accuracy": accuracy,
        "params": int(sum(p.numel() for p in model.parameters())),
        "onnx_bytes": onnx_path.stat().st_size,
        "export_max_abs_diff": max_diff,
        "build_seconds": round(time.perf_counter() - started, 1),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "spec": spec_dict(spec),
        "serving": dataclasses.asdict(serving) | {"intra_op_threads": serving.threads()},
        "versions": library_versions(),
    }
    update_record(workdir, spec.name, variant, entry)
    return entry


def example_batch(spec: ModelSpec, batch: int = 2) -> dict:
    """Export example: batch and dynamic axes > 1 so the exporter keeps them symbolic."""
    return {t.name: np.ones(spec.example_shape(t, batch), dtype=t.dtype) for t in spec.inputs}


def spec_dict(spec: ModelSpec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def record_path(artifacts: pathlib.Path, model: str) -> pathlib.Path:
    return artifacts / model / "record.json"


def read_record(artifacts: pathlib.Path, model: str) -> dict:
    path = record_path(artifacts, model)
    return json.loads(path.read_text()) if path.is_file() else {"model": model, "variants": {}}


def update_record(workdir: pathlib.Path, model: str, variant: str, entry: dict) -> None:
    record = read_record(workdir.parent, model)
    record["variants"][variant] = entry
    path = record_path(workdir.parent, model)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
