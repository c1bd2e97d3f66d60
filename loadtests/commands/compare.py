"""`builder compare` (= `python -m loadtests compare`): regression gate: exit 1 when NEW is worse than BASELINE beyond
the measured intervals or the accuracy's standard error."""

from __future__ import annotations

import pathlib

from builder.core.console import print_table

from ..results import read_results
from ..rollout.compare import compare_runs, tables

HELP = ('regression gate: exit 1 when NEW is worse than BASELINE beyond the measured intervals or the '
        "accuracy's standard error")


def add_arguments(compare) -> None:
    compare.add_argument("baseline", type=pathlib.Path, help="BASELINE/results.json")
    compare.add_argument("new", type=pathlib.Path, help="NEW/results.json")
    compare.add_argument("--se-multiple", type=float, default=2.0,
                         help="accuracy regressed when it fell by more than this many standard errors (default 2)")
    compare.add_argument("--margin", type=float, default=0.0,
                         help="widen every interval by this fraction (e.g. 0.1) on a runner whose load changes "
                              "between runs (default 0)")
    compare.add_argument("--allow-points", action="store_true",
                         help="also gate steps measured without windows (any difference then counts)")


def run(args) -> int:
    runs = [read_results(path) for path in (args.baseline, args.new)]
    result = compare_runs(*runs, se_multiple=args.se_multiple, allow_points=args.allow_points, margin=args.margin)
    for header, body in tables(result):
        if body:
            print()
            print_table(header, body)
    for line in result["missing"] + result["added"]:
        print(line)
    if result["accuracy_unchecked"]:
        print("accuracy not compared: a results.json without its build-record copy (`records`; older runs)")
    print("\nREGRESSION beyond the measured noise" if result["regressed"] else "\nno regression beyond the measured noise")
    return 1 if result["regressed"] else 0
