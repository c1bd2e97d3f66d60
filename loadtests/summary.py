"""The console summary of a report (what `builder demo` and `python -m loadtests run|report` print): per source,
the variants table with the columns a terminal has room for, picked by name, then the recommendation, the
capacity plan and the served footprint."""

from __future__ import annotations

from builder.core.console import print_table

from .report import footprint_table, plan_table, plan_text, summary_table

# summary_table's columns a terminal has room for
CONSOLE_COLUMNS = ["variant", "accuracy %", "agreement %", "fp32 % on these examples", "MMACs", "compute vs fp32",
                   "% of peak b1 / b32", "p50 ms", "p99 ms", "p99 windows", "max examples/s", "at users", "batch",
                   "verdict"]


def print_summary(report: dict) -> None:
    for source in report["sources"]:
        header, body = summary_table(report, source)
        print(f"\n{source}")
        print_table(header, body, CONSOLE_COLUMNS, text_last=True)
        print(report["recommendations"][source]["text"])
        planned = plan_table(report, source)
        if planned:
            print()
            print_table(*planned)
            print(plan_text(report, source))
        footprint_header, footprint_body = footprint_table(report, source)
        if footprint_body:
            print_table(footprint_header, footprint_body)
