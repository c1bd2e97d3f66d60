"""`builder plan` (= `python -m loadtests plan`): replicas, cores, memory and cost per variant for a target rate."""

from __future__ import annotations

import pathlib

from builder.core.console import print_table

from ..report import plan_table, plan_text
from .options import add_budget_arguments, add_plan_arguments, load_report

HELP = 'replicas, cores, memory and cost per variant for a target rate'


def add_arguments(plan) -> None:
    plan.add_argument("--report", type=pathlib.Path, required=True, help="a run's folder (holds results.json)")
    plan.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"),
                      help="build records (default: the copy in results.json)")
    add_budget_arguments(plan)
    add_plan_arguments(plan, required=True)


def run(args) -> int:
    report = load_report(args)
    for source in report["sources"]:
        print(f"\n{source}")
        header, body = plan_table(report, source)
        print_table(header, body)
        print(plan_text(report, source))
    return 0 if any(p.lines for p in report["plans"].values()) else 1
