"""`builder bench` (= `python -m loadtests bench`): in-process ONNX Runtime vs served over HTTP and gRPC."""

from __future__ import annotations

import json
import pathlib

from builder.core.errors import unknown_name
from builder.core.files import atomic_write
from builder.serving.repository import list_models

from ..bench import print_table as print_bench_table
from ..bench import run_bench
from ..generator_bench import print_table as print_generator_table
from ..generator_bench import run_generator_bench

HELP = 'in-process ONNX Runtime vs served over HTTP and gRPC'


def add_arguments(bench) -> None:
    bench.add_argument("--models", default="minilm_fp32,digits_fp32", help="served model names, comma-separated")
    bench.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    bench.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    bench.add_argument("--seconds", type=float, default=5.0, help="seconds per measured point")
    bench.add_argument("--repeats", type=int, default=2,
                       help="rounds of the Locust-vs-perf_analyzer and spinning comparisons (default 2)")
    bench.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/bench.json"))
    bench.add_argument("--generator-only", action="store_true",
                       help="only Locust (one process and auto workers) vs perf_analyzer, gRPC and HTTP, with the CPU "
                            "each side spends per request (loadtests/generator_bench.py)")


def run(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = list_models(args.repository)
    for model in models:
        if model not in known:
            raise unknown_name("model", model, known, hint="build it first with `builder build`")
    raw = args.out.parent / f"{args.out.stem}-raw"
    progress = lambda line: print(line, flush=True)  # noqa: E731
    if args.generator_only:
        results = run_generator_bench(models, args.repository, args.artifacts, args.seconds, max(args.repeats, 1),
                                      raw, progress=progress)
    else:
        results = run_bench(models, args.repository, args.artifacts, args.seconds, repeats=max(args.repeats, 1),
                            raw=raw, progress=progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(results, indent=2))
    (print_generator_table if args.generator_only else print_bench_table)(results)
    print(f"\nwrote {args.out}")
    return 0
