"""The compression benchmark: per built variant, its accuracy facts from the build record (drop vs fp32 on the
first evaluation split +- its standard error, top-1 agreement, build seconds, the gates it failed) beside its
in-process speed against fp32, interleaved: `python -m builder.speedbench --model minilm --artifacts A
--variants distilled,distilled+int8,pruned --repeats 5` (`--variants all`: every variant in the record).
`--fusion` adds, for each int8 variant built with graph fusion, its twin quantized again from the same float file
without fusion, timed in the same rounds, and both files' accuracy on the first evaluation split.

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
import tempfile

import numpy as np

from .core.artifacts import load_splits, read_record
from .core.errors import ArtifactsError
from .core.handler import run_command
from .core.machine import cpu_isa
from .core.record import BuildEntry, entries
from .pipeline.measure import fixed_batch, latency_p50_ms
from .pipeline.models import resolve_spec


def onnx_file(folder: pathlib.Path) -> pathlib.Path:
    """The variant's served file: the int8 one where the folder has it."""
    quantized = sorted(folder.glob("model.int8*.onnx"))
    return quantized[0] if quantized else folder / "model.onnx"


def bench(spec, workdir: pathlib.Path, variants: list[str], repeats: int, batches=(1, 32), threads: int = 1,
          progress=print, extra: dict | None = None) -> dict:
    """{variant: {"b<batch>": {"median": x, "min": x, "max": x, "ms": median ms}}}, speedups vs fp32 per round;
    `extra` ({name: ONNX file}) are timed in the same rounds under their names."""
    files = {v: onnx_file(workdir / v) for v in ["fp32", *variants]} | (extra or {})
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ArtifactsError(f"not built: {', '.join(missing)}",
                             hint="builder build --model ... --variant ... --artifacts <the same folder> first")
    split = load_splits(spec, workdir)[spec.evaluate[0]]
    out = {}
    for batch in batches:
        inputs = fixed_batch(spec, split, batch)
        times = {v: [] for v in files}
        for r in range(repeats):
            for v, f in files.items():
                times[v].append(latency_p50_ms(f, inputs, threads))
            progress(f"batch {batch} round {r + 1}/{repeats}: " + ", ".join(f"{v} {t[-1]:.2f} ms" for v, t in times.items()))
        for v in [v for v in files if v != "fp32"]:
            ratios = np.array(times["fp32"]) / np.array(times[v])
            out.setdefault(v, {})[f"b{batch}"] = {"median": round(float(np.median(ratios)), 2),
                                                  "min": round(float(ratios.min()), 2),
                                                  "max": round(float(ratios.max()), 2),
                                                  "ms": round(float(np.median(times[v])), 3),
                                                  # the fastest round of each: what the least-disturbed runs give
                                                  "best": round(float(min(times["fp32"]) / min(times[v])), 2),
                                                  "fp32_ms": round(float(np.median(times["fp32"])), 3)}
    return out


def float_source(variant: str) -> str:
    """The variant whose float file an int8 variant was quantized from: `distilled+int8` -> distilled, int8 -> fp32."""
    parts = variant.split("+")
    return "+".join(parts[:-1]) or "fp32"


def unfused_twins(workdir: pathlib.Path, record: dict, variants: list[str], scratch: pathlib.Path) -> dict:
    """{"<variant> unfused": file} for each dynamic int8 variant whose build fused something."""
    from .pipeline.variants.int8 import requantized

    twins = {}
    for v in variants:
        notes = record[v].raw["notes"] if v in record else {}
        if (notes.get("int8_fusion") or {}).get("fused_ops") and notes.get("int8_method") == "dynamic":
            source = workdir / float_source(v) / "model.onnx"
            twins[f"{v} unfused"] = requantized(source, scratch / v.replace("+", "-"), notes, fusion=False)
    return twins


def fusion_accuracy(spec, workdir: pathlib.Path, twins: dict, split_name: str) -> list[str]:
    """One line per twin: the accuracy of the served (fused) and unfused files on `split_name` and their top-1
    agreement."""
    from .core.evaluate import agreement_top1, onnx_predictor, onnx_session, outputs_on, score

    split, metric = load_splits(spec, workdir)[split_name], spec.metric
    lines = []
    for name, twin in twins.items():
        variant = name.removesuffix(" unfused")
        outs = [outputs_on(onnx_predictor(onnx_session(f)), spec, split) for f in (onnx_file(workdir / variant), twin)]
        fused, unfused = (score(metric, o, split.labels) * 100 for o in outs)
        agreement = agreement_top1(metric, outs[0], outs[1], split.labels)
        lines.append(f"{variant}: accuracy on `{split_name}` fused {fused:.2f} %, unfused {unfused:.2f} %; "
                     f"top-1 agreement {agreement:.3f}")
    return lines


def record_columns(entry: BuildEntry | None) -> str:
    """drop +- se, agreement, build seconds and verdict of one record entry, as the table prints them."""
    if entry is None:
        return f"{'-':>13} {'-':>6} {'-':>7}  not in the record"
    drop, se, agreement = entry.accuracy_drop_points, entry.accuracy_drop_se_points, entry.agreement_top1
    drop_text = "-" if drop is None else f"{drop:.2f} +- {se or 0:.2f}"
    return (f"{drop_text:>13} {'-' if agreement is None else f'{agreement:.3f}':>6} "
            f"{entry.build_seconds:>7.0f}  {'refused: ' + '; '.join(entry.gates_failed) if entry.refused else 'passes'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.speedbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--variants", required=True,
                        help="comma-separated, built into --artifacts; `all`: every variant of the build record")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fusion", action="store_true",
                        help="also time each fused int8 variant's unfused twin (quantized again here)")
    parser.add_argument("--fusion-split", help="the split the twins' accuracy is compared on (default: the first "
                                               "evaluation split; `validation` is where the choice was made)")
    args = parser.parse_args(argv)
    spec = resolve_spec(args.model)
    artifacts = pathlib.Path(args.artifacts)
    record = entries(read_record(artifacts, spec.name))
    variants = [v for v in record if v != "fp32"] if args.variants == "all" else args.variants.split(",")
    fusion_split = args.fusion_split or spec.evaluate[0]
    if args.fusion and fusion_split not in load_splits(spec, artifacts / spec.name):  # before minutes of timing
        raise ArtifactsError(f"{spec.name} has no split `{fusion_split}`",
                             hint=f"one of: {', '.join(load_splits(spec, artifacts / spec.name))}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as scratch:
        twins = unfused_twins(artifacts / spec.name, record, variants, pathlib.Path(scratch)) if args.fusion else {}
        result = bench(spec, artifacts / spec.name, variants, args.repeats, extra=twins)
        fusion_lines = fusion_accuracy(spec, artifacts / spec.name, twins, fusion_split)
    split, isa = spec.evaluate[0], cpu_isa()
    print(f"\nspeedup vs fp32, in-process ONNX Runtime, 1 thread, median of {args.repeats} interleaved rounds "
          f"[min..max]; CPU {isa['model']}, {isa['summary']}. Drop: points vs fp32 on `{split}` +- its standard error (build record)")
    print(f"{'variant':<20} {'b1 ms':>8} {'x b1':>18} {'best':>6} {'b32 ms':>9} {'x b32':>18} {'best':>6} "
          f"{'drop':>13} {'agree':>6} {'build s':>7}  verdict")
    for v in ["fp32", *variants, *twins]:
        if v == "fp32":
            first = result[variants[0]]
            print(f"{v:<20} {first['b1']['fp32_ms']:>8.2f} {'1.00':>18} {'1.00':>6} {first['b32']['fp32_ms']:>9.2f} "
                  f"{'1.00':>18} {'1.00':>6} {record_columns(record.get(v))}")
            continue
        b1, b32 = result[v]["b1"], result[v]["b32"]
        print(f"{v:<20} {b1['ms']:>8.2f} {b1['median']:>6.2f} [{b1['min']:5.2f}..{b1['max']:5.2f}] {b1['best']:>6.2f} "
              f"{b32['ms']:>9.2f} {b32['median']:>6.2f} [{b32['min']:5.2f}..{b32['max']:5.2f}] {b32['best']:>6.2f} "
              f"{record_columns(record.get(v)) if v not in twins else '  twin quantized here without fusion'}")
    for line in fusion_lines:
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f} (2 cores: above ~1 other jobs shared them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
