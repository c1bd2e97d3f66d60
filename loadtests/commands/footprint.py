"""`builder footprint` (= `python -m loadtests footprint`): load time and memory per instance of served models, written
to their build records."""

from __future__ import annotations

from builder.core.console import print_table
from builder.serving.footprint import measure_models, write_footprint

from ..report import footprint_rows
from ..run import check_target, has_record
from .options import add_memory_budget_argument, add_target_arguments, target_for

HELP = 'load time and memory per instance of served models, written to their build records'


def add_arguments(footprint) -> None:
    footprint.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    add_memory_budget_argument(footprint)
    add_target_arguments(footprint)


def run(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with target_for(args) as target:
        everything = models == ["all"]
        models = [m for m in check_target(target, models)
                  if has_record(m, args.artifacts, skip=everything, progress=print)]
        measured = measure_models(target, args.repository, models, args.artifacts,
                                  progress=lambda line: print(line, flush=True))
    if not measured:
        print("no model measured")
        return 1
    written = {model: write_footprint(args.artifacts, model, footprint) for model, footprint in measured.items()}
    header, body = footprint_rows(measured, args.memory_budget)
    print()
    print_table(header, body)
    baseline = next(iter(measured.values()), {}).get("baseline")
    if baseline:
        print(f"\nEach instance is a Python backend stub process (embedded server); its RSS includes the interpreter "
              f"and onnxruntime: the smallest here, {baseline['model']}, is {baseline['rss_bytes'] / 1e6:.0f} MB.")
    print("written to: " + ", ".join(sorted({str(p) for p in written.values()})))
    return 0
