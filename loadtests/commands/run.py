"""`builder load` (= `python -m loadtests run`): Locust load test of served models, then the report."""

from __future__ import annotations

import argparse
import pathlib
import time

from builder.core.artifacts import read_records

from ..report import build_report, write_report
from ..results import read_results, results_file
from ..run import LoadSettings, LoadTestError, run_load
from ..summary import print_summary
from .options import (
    add_budget_arguments,
    add_memory_budget_argument,
    add_plan_arguments,
    add_target_arguments,
    duration,
    plan_options,
    target_for,
    users_list,
)

HELP = 'Locust load test of served models, then the report'


def add_arguments(run) -> None:
    run.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    run.add_argument("--users", type=users_list, default=(1, 4, 16), help="load steps: users (default 1,4,16)")
    run.add_argument("--duration", type=duration, default=30.0, help="per step (default 30s)")
    run.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    run.add_argument("--batch-size", type=int, default=1, help="examples per request (default 1)")
    run.add_argument("--arrival-rate", type=float, default=0.0,
                     help="open loop: requests/s per user on a fixed schedule (default 0: closed loop)")
    run.add_argument("--workers", default="0",
                     help="run Locust distributed: a master and N workers; `auto`: per model, from a 2 s "
                          "single-process probe (one process unless it is generator-bound; then up to the cores)")
    run.add_argument("--windows", type=int, default=3,
                     help="equal windows per step for the throughput and p99 intervals (default 3; ties need >= 3)")
    run.add_argument("--repeats", type=int, default=1,
                     help="run every step this many times, interleaved; the interval spans all their windows, so it "
                          "also holds run-to-run noise (default 1; costs N x the time)")
    run.add_argument("--perf-analyzer", action=argparse.BooleanOptionalAction, default=True,
                     help="cross-check each model with NVIDIA perf_analyzer at the highest users step (default on)")
    run.add_argument("--out", type=pathlib.Path, help="output folder (default reports/<date-time>)")
    run.add_argument("--footprint", action=argparse.BooleanOptionalAction, default=True,
                     help="first measure each model's load time and memory per instance (reloads it; default on)")
    add_memory_budget_argument(run)
    add_target_arguments(run)
    add_budget_arguments(run)
    add_plan_arguments(run)


def run(args) -> int:
    workers, auto_workers = parse_workers(args.workers)
    if args.batch_size < 1 or args.arrival_rate < 0:
        raise LoadTestError("--batch-size must be >= 1, --arrival-rate >= 0")
    out = args.out or pathlib.Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    if args.windows < 1 or args.repeats < 1:
        raise LoadTestError("--windows and --repeats must be >= 1 (3 or more windows to tell ties)")
    settings = LoadSettings(users=args.users, duration_s=args.duration, protocol=args.protocol,
                            batch_size=args.batch_size, arrival_rate=args.arrival_rate, workers=workers,
                            auto_workers=auto_workers, windows=args.windows, repeats=args.repeats)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = None
    try:
        with target_for(args) as target:
            results = run_load(models, target, settings, args.artifacts, out, perf_analyzer=True if args.perf_analyzer else (),
                               progress=lambda line: print(line, flush=True), footprint=args.footprint,
                               repository=args.repository, memory_budget=args.memory_budget)
    finally:  # partial results still get a report (Ctrl-C, a failed step)
        if results_file(out).is_file():
            results = read_results(out)
            if results.steps:
                report = build_report(results, read_records(args.artifacts), args.slo_p99_ms, args.max_accuracy_drop,
                                      memory_budget=args.memory_budget, **plan_options(args))
                md, html = write_report(report, out)
                print_summary(report)
                print(f"\nreport: {html}\n        {md}\nraw data: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def parse_workers(text: str) -> tuple[int, bool]:
    """--workers N or `auto` -> (workers, auto_workers). Raises LoadTestError for anything else."""
    if text.strip().lower() == "auto":
        return 0, True
    try:
        workers = int(text)
    except ValueError:
        workers = -1
    if workers < 0:
        raise LoadTestError(f"--workers must be a whole number >= 0 or `auto`, got `{text}`",
                            hint="e.g. --workers 2, or --workers auto to choose from a probe step")
    return workers, False
