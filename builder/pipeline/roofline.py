"""How close a variant runs to the machine: the CPU's ISA, its measured peak FLOP/s, and each variant's achieved
FLOP/s as a fraction of it (the slide arithmetic "FLOPs / FLOPS = time", measured).

Peak: the best of many runs of one GEMM (M = N = K = 512, in cache: large enough to be compute-bound) in ONNX Runtime, the runtime the variants run
in: fp32 through `MatMul`, int8 through `MatMulInteger` (uint8 x int8, the U8S8 pair the int8 variants use), with
1 thread and with every core. Measured once per machine and cached in `<artifacts>/machine_peak.json`, keyed by
the CPU model, its ISA flags, the core count and the ONNX Runtime version. It is the peak this runtime's GEMM
reaches, not the datasheet's: on AVX2 without VNNI the int8 GEMM has no instruction that multiplies-and-adds bytes
in one step, so its peak is close to fp32's and int8 gains ~1.0x; with AVX-512 VNNI (or AVX-VNNI) it is 2-4x fp32's.

Achieved: 2 x MACs x batch / latency, with the variant's MACs (builder.pipeline.measure.count_macs, batch 1, dynamic axes at
their example size, which is also what the latency is measured on) and its p50 at batch 1 and 32. The fraction is
against the fp32 peak for float variants and against the int8 peak for quantized ones (`precision`), at the same
thread count. MACs count only matrix products and convolutions, so the fraction is a lower bound of how busy the
arithmetic units are; small models at batch 1 sit far below 1 because their time goes to overheads, not to math.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time

import numpy as np

from ..core.files import atomic_write
from ..core.machine import cpu_isa

GEMM_SIZE = 512  # 1024^3 fp32 measured 28 GFLOP/s here against 248 at 512^3 and 256^3: power-of-two strides thrash
PEAK_RUNS = 10
PEAK_SECONDS = 2.0
def _gemm_model(precision: str, size: int):
    from onnx import TensorProto, helper

    if precision == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], f"peak_{precision}", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def gemm_flops(precision: str, threads: int, size: int = GEMM_SIZE, runs: int = PEAK_RUNS) -> float:
    """Best FLOP/s (2 x size^3 per run) of one size^3 GEMM in ONNX Runtime with `threads` intra-op threads. On a
    machine shared with other work it is a lower bound of the peak (a variant's fraction can then exceed 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_gemm_model(precision, size), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if precision == "fp32":
        feeds = {"a": rng.standard_normal((size, size), dtype=np.float32),
                 "b": rng.standard_normal((size, size), dtype=np.float32)}
    else:
        feeds = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8),
                 "b": rng.integers(-128, 128, (size, size), dtype=np.int8)}
    session.run(None, feeds)  # warm-up: packing, thread pool start
    best, began, done = float("inf"), time.perf_counter(), 0
    # the best of at least `runs` runs and PEAK_SECONDS: on a shared machine only the uncontended runs show the peak
    while done < runs or time.perf_counter() - began < PEAK_SECONDS:
        started = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - started)
        done += 1
    return 2.0 * size ** 3 / best


def machine_key(isa: dict) -> str:
    import onnxruntime

    text = json.dumps([isa["model"], isa["flags"], os.cpu_count(), onnxruntime.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def thread_counts() -> tuple[int, ...]:
    return tuple(sorted({1, os.cpu_count() or 1}))


def machine_peak(cache_dir: pathlib.Path, progress=print) -> dict:
    """{"isa": cpu_isa(), "key": ..., "gflops": {"fp32": {"1": ..., "<all>": ...}, "int8": {...}}}: measured once
    per machine and cached in `cache_dir/machine_peak.json` (one entry per machine key)."""
    isa = cpu_isa()
    key = machine_key(isa)
    path = pathlib.Path(cache_dir) / "machine_peak.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if key in cached:
        return cached[key]
    progress(f"measuring this machine's peak GEMM FLOP/s once ({isa['summary']}; fp32 MatMul and int8 "
             f"MatMulInteger, {GEMM_SIZE}^3, threads {', '.join(map(str, thread_counts()))})")
    gflops = {precision: {str(t): round(gemm_flops(precision, t) / 1e9, 1) for t in thread_counts()}
              for precision in ("fp32", "int8")}
    entry = {"isa": isa, "key": key, "gemm_size": GEMM_SIZE, "gflops": gflops,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cached[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(cached, indent=2))
    return entry


def achieved(macs: int, latency_ms: dict, peak: dict, precision: str) -> dict:
    """Per latency key ("b1_t1", "b32_t2", ...): achieved GFLOP/s (2 x MACs x batch / latency) and its fraction of
    `peak`'s `precision` GEMM at the same thread count (the nearest measured count at or below it)."""
    measured = {int(t): g for t, g in peak["gflops"][precision].items()}
    result = {}
    for key, ms in latency_ms.items():
        batch, threads = (int(part[1:]) for part in key.split("_"))
        reference = measured[max([t for t in measured if t <= threads] or [min(measured)])]
        gflops = 2.0 * macs * batch / (ms / 1000) / 1e9 if ms else 0.0
        result[key] = {"gflops": round(gflops, 2), "fraction_of_peak": round(gflops / reference, 4)}
    return {"precision": precision, "peak_gflops": peak["gflops"][precision], "by_latency": result}

