"""In-process speed of built variants against fp32, interleaved: `python -m builder.speedbench --model minilm
--artifacts A --variants distilled,tinybert,tinybert+int8 --repeats 5`.

A build measures each variant once beside fp32; on a shared machine one such pair can be far off (another job
takes a core during one of the two). This benchmark runs rounds of fp32 then every variant, `repeats` times, each
a fresh warmed session (measure.latency_p50_ms), and reports per variant the median of its per-round speedups and
their min..max, and the ratio of each file's fastest round (on a busy machine the least disturbed figure), at
batch 1 and 32 with 1 thread, with the CPU's ISA. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

from .measure import fixed_batch, latency_p50_ms
from .models import resolve_spec
from .roofline import cpu_isa
from .core.artifacts import load_splits


def onnx_file(folder: pathlib.Path) -> pathlib.Path:
    """The variant's served file: the int8 one where the folder has it."""
    quantized = sorted(folder.glob("model.int8*.onnx"))
    return quantized[0] if quantized else folder / "model.onnx"


def bench(spec, workdir: pathlib.Path, variants: list[str], repeats: int, batches=(1, 32), threads: int = 1,
          progress=print) -> dict:
    """{variant: {"b<batch>": {"median": x, "min": x, "max": x, "ms": median ms}}}, speedups vs fp32 per round."""
    split = load_splits(spec, workdir)[spec.evaluate[0]]
    files = {v: onnx_file(workdir / v) for v in ["fp32", *variants]}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(f"error: not built: {', '.join(missing)}\nhint: builder build --variant ... --artifacts first")
    out = {}
    for batch in batches:
        inputs = fixed_batch(spec, split, batch)
        times = {v: [] for v in files}
        for r in range(repeats):
            for v, f in files.items():
                times[v].append(latency_p50_ms(f, inputs, threads))
            progress(f"batch {batch} round {r + 1}/{repeats}: " + ", ".join(f"{v} {t[-1]:.2f} ms" for v, t in times.items()))
        for v in variants:
            ratios = np.array(times["fp32"]) / np.array(times[v])
            out.setdefault(v, {})[f"b{batch}"] = {"median": round(float(np.median(ratios)), 2),
                                                  "min": round(float(ratios.min()), 2),
                                                  "max": round(float(ratios.max()), 2),
                                                  "ms": round(float(np.median(times[v])), 3),
                                                  # the fastest round of each: what the least-disturbed runs give
                                                  "best": round(float(min(times["fp32"]) / min(times[v])), 2),
                                                  "fp32_ms": round(float(np.median(times["fp32"])), 3)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.speedbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--variants", required=True, help="comma-separated, built into --artifacts")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    spec = resolve_spec(args.model)
    variants = args.variants.split(",")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    result = bench(spec, pathlib.Path(args.artifacts) / spec.name, variants, args.repeats)
    print(f"\nspeedup vs fp32, in-process ONNX Runtime, 1 thread, median of {args.repeats} interleaved rounds "
          f"[min..max]; CPU {cpu_isa()}")
    print(f"{'variant':<20} {'b1 ms':>8} {'x b1':>18} {'best':>6} {'b32 ms':>9} {'x b32':>18} {'best':>6}")
    for v in ["fp32", *variants]:
        if v == "fp32":
            first = result[variants[0]]
            print(f"{v:<20} {first['b1']['fp32_ms']:>8.2f} {'1.00':>18} {'1.00':>6} {first['b32']['fp32_ms']:>9.2f} "
                  f"{'1.00':>18} {'1.00':>6}")
            continue
        b1, b32 = result[v]["b1"], result[v]["b32"]
        print(f"{v:<20} {b1['ms']:>8.2f} {b1['median']:>6.2f} [{b1['min']:5.2f}..{b1['max']:5.2f}] {b1['best']:>6.2f} "
              f"{b32['ms']:>9.2f} {b32['median']:>6.2f} [{b32['min']:5.2f}..{b32['max']:5.2f}] {b32['best']:>6.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (2 cores: above ~1 other jobs shared them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
