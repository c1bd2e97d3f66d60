"""Cost of the embedded backend's input checks (builder/serving/backends/onnxruntime/model.py InputChecks) per request,
in-process, and of deriving a model's limits at build time. A benchmark, not a test.

    python -m loadtests.checks_bench [--onnx <artifacts>/minilm/fp32/model.onnx]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
import timeit
import types

import numpy as np

from builder.core.spec import load_spec
from builder.serving.limits import derive_limits

MINILM_SPEC = pathlib.Path(__file__).parent.parent / "builder" / "pipeline" / "sources" / "minilm.yaml"

BACKEND = pathlib.Path(__file__).resolve().parent.parent / "builder" / "serving" / "backends" / "onnxruntime" / "model.py"
TEXT_LIMITS = {"inputs": {"input_ids": {"min": 0, "max": 30521},
                          "attention_mask": {"min": 0, "max": 1, "nonzero_rows": True}},
               "dims": {"seq": {"min": 1, "max": 512, "axes": [["input_ids", 1], ["attention_mask", 1]]}}}
IMAGE_LIMITS = {"inputs": {"image": {"finite": True, "min": 0, "max": 255}}, "dims": {}}


def input_checks_class():
    """InputChecks from the backend file; the Python backend's utils module is only named there, not used."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("kit_onnxruntime_backend", BACKEND)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InputChecks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=pathlib.Path, help="a MiniLM model.onnx: also time deriving its limits")
    args = parser.parse_args()
    checks = input_checks_class()
    text, image = checks(TEXT_LIMITS, ["input_ids", "attention_mask"]), checks(IMAGE_LIMITS, ["image"])
    rng = np.random.default_rng(0)
    cases = [("MiniLM ids+mask 1x32", text, [rng.integers(0, 30522, (1, 32)), np.ones((1, 32), np.int64)]),
             ("MiniLM ids+mask 64x128", text, [rng.integers(0, 30522, (64, 128)), np.ones((64, 128), np.int64)]),
             ("digits image 1x1x28x28", image, [rng.uniform(0, 255, (1, 1, 28, 28)).astype(np.float32)]),
             ("digits image 64x1x28x28", image, [rng.uniform(0, 255, (64, 1, 28, 28)).astype(np.float32)])]
    print(f"{'request':26} {'us per check':>12}  (best of 5 x 1000, valid requests: every check runs)")
    for label, checker, arrays in cases:
        assert checker.problem(arrays) is None
        best = min(timeit.repeat(lambda: checker.problem(arrays), number=1000, repeat=5)) / 1000 * 1e6
        print(f"{label:26} {best:12.1f}")
    if args.onnx:
        started = time.perf_counter()
        limits = derive_limits(load_spec(MINILM_SPEC), args.onnx)
        print(f"derive_limits(minilm, {args.onnx}): {time.perf_counter() - started:.2f} s -> vocabulary "
              f"{limits['inputs']['input_ids']['max'] + 1}, seq 1..{limits['dims']['seq']['max']}")


if __name__ == "__main__":
    from builder.core.handler import run_command

    raise SystemExit(run_command(lambda: main() or 0))
