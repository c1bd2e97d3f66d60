"""Run ONNX models on ONNX Runtime 1.19.2, the runtime of the official image the kit deploys to.

The kit builds and measures with a newer onnxruntime; `nvcr.io/nvidia/tritonserver:24.10-py3` (server 2.51.0, the
embedded server's release) serves `backend: "onnxruntime"` with ONNX Runtime 1.19.2. A model that loads here may
use an opset, an IR version or a fused kernel that runtime lacks. `container_runtime()` makes, once, a separate
virtual environment with exactly that release (cached under ~/.cache/triton-deploy-kit/); `run_models()` runs
models there on given inputs, so tests can compare its outputs with the current runtime's
(tests/e2e/test_portability.py).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from ..core.errors import BuilderError

CONTAINER_ORT = "1.19.2"  # onnxruntime of Triton 24.10's onnxruntime backend
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "triton-deploy-kit" / f"ort-{CONTAINER_ORT}"

# Runs in the other environment: only onnxruntime and numpy there. argv: a JSON list of jobs.
RUNNER = """
import json, sys
import numpy as np
import onnxruntime as ort

for job in json.loads(open(sys.argv[1]).read()):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
    with np.load(job["inputs"]) as data:
        feeds = {name: data[name] for name in data.files}
    names = [o.name for o in session.get_outputs()]
    np.savez(job["outputs"], **dict(zip(names, session.run(names, feeds))))
print(ort.__version__)
"""


class RuntimeUnavailable(BuilderError):
    """ONNX Runtime 1.19.2 could not be installed into its environment (no registry reachable, no wheel)."""


def container_runtime(cache: pathlib.Path = DEFAULT_CACHE) -> pathlib.Path:
    """The Python of a virtual environment with onnxruntime==1.19.2 and numpy<2, made on first use (~20 s).

    Raises RuntimeUnavailable if pip cannot install it; nothing half-made is left in `cache`.
    """
    cache = pathlib.Path(cache)
    python = cache / "bin" / "python"
    stamp = cache / ".installed"
    if stamp.is_file() and python.exists():
        return python
    shutil.rmtree(cache, ignore_errors=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(cache)], check=True, capture_output=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              f"onnxruntime=={CONTAINER_ORT}", "numpy<2"], capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        shutil.rmtree(cache, ignore_errors=True)
        lines = [line for line in install.stderr.splitlines() if line.startswith("ERROR")] \
            or install.stderr.splitlines()
        raise RuntimeUnavailable(f"pip could not install onnxruntime=={CONTAINER_ORT}: {' | '.join(lines[-2:])}",
                                 hint="check that a package index is reachable, then run again")
    stamp.write_text(CONTAINER_ORT + "\n")
    return python


def run_models(jobs: list[tuple[pathlib.Path, dict]], python: pathlib.Path | None = None) -> tuple[str, list[dict]]:
    """Run each (ONNX file, {input name: array}) on ONNX Runtime 1.19.2 (CPU provider, one thread).

    Returns (the onnxruntime version that ran them, [{output name: array}] in the order of `jobs`). Raises
    BuilderError with the runtime's message if a model does not load or run there.
    """
    python = python or container_runtime()
    with tempfile.TemporaryDirectory(prefix="ort-portability-") as tmp:
        folder = pathlib.Path(tmp)
        manifest = []
        for i, (model, inputs) in enumerate(jobs):
            np.savez(folder / f"in{i}.npz", **inputs)
            manifest.append({"model": str(model), "inputs": str(folder / f"in{i}.npz"),
                             "outputs": str(folder / f"out{i}.npz")})
        (folder / "jobs.json").write_text(json.dumps(manifest))
        (folder / "runner.py").write_text(RUNNER)
        result = subprocess.run([str(python), str(folder / "runner.py"), str(folder / "jobs.json")],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise BuilderError(f"ONNX Runtime {CONTAINER_ORT} failed: {result.stderr.strip().splitlines()[-1:]}",
                               hint="the official image would fail to load or run this model the same way")
        outputs = []
        for job in manifest:
            with np.load(job["outputs"]) as data:
                outputs.append({name: data[name] for name in data.files})
        return result.stdout.strip().splitlines()[-1], outputs
