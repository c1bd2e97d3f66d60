"""`builder report` (= `python -m loadtests report`): rebuild report.html/.md from a run's results.json (and the
overload.json in the same folder, if there)."""

from __future__ import annotations

import json
import pathlib

from builder.core.artifacts import read_records

from ..report import build_report, write_report
from ..results import read_results
from ..summary import print_summary
from .options import add_budget_arguments, add_memory_budget_argument, add_plan_arguments, plan_options

HELP = ("rebuild report.html/.md from a run's results.json (and the overload.json in the same folder, if "
        'there)')


def add_arguments(report) -> None:
    report.add_argument("run_dir", type=pathlib.Path)
    report.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    add_budget_arguments(report)
    add_memory_budget_argument(report, default=None)
    add_plan_arguments(report)


def run(args) -> int:
    results = read_results(args.run_dir)
    overload = args.run_dir / "overload.json"  # `python -m loadtests overload --out <run>/overload.json`
    report = build_report(results, read_records(args.artifacts), args.slo_p99_ms,
                          args.max_accuracy_drop, memory_budget=args.memory_budget, **plan_options(args),
                          overload=json.loads(overload.read_text()) if overload.is_file() else None)
    md, html = write_report(report, args.run_dir)
    print_summary(report)
    print(f"\nreport: {html}\n        {md}")
    return 0
