"""`builder demo`: build, serve, check and load-test the demo models (or yours) end to end, and write the report."""

from __future__ import annotations

import pathlib

from loadtests.summary import print_summary

from ..demo import run_demo
from .options import DEFAULT_ARTIFACTS, DEFAULT_REPOSITORY, model_arguments, resolve_build_spec

HELP = 'build, serve, check and load-test both demo models (or yours) end to end, and write the report'


def add_arguments(demo) -> None:
    model_arguments(demo)  # none given: both demo models
    demo.add_argument("--repository", type=pathlib.Path, default=DEFAULT_REPOSITORY)
    demo.add_argument("--artifacts", type=pathlib.Path, default=DEFAULT_ARTIFACTS)
    demo.add_argument("--examples", type=int, default=500, help="examples per split sent through the server (default 500)")
    demo.add_argument("--rebuild", action="store_true", help="rebuild models already in the repository")
    demo.add_argument("--quick", action="store_true", help="a first look: fp32 and int8 only, short load steps")
    demo.add_argument("--reports", type=pathlib.Path, default=pathlib.Path("reports"), help="where the report goes")
    demo.add_argument("--slo-p99-ms", type=float, default=50.0, help="latency budget of the recommendation")
    demo.add_argument("--max-accuracy-drop", type=float, default=1.0, help="accuracy budget, points below fp32")


def run(args) -> int:
    chosen = any(getattr(args, flag) for flag in ("model", "config", "hf_model", "onnx_model", "torch_program"))
    specs = [resolve_build_spec(args)[0]] if chosen else None  # your model (its spec written first), or the demo's
    result = run_demo(args.repository, args.artifacts, args.reports, args.examples, args.rebuild, args.quick,
                      args.slo_p99_ms, args.max_accuracy_drop, specs=specs)
    rows = result["accuracy"]
    print(f"\n{'model':16} {'split':16} {'examples':>8} {'protocol':>8} {'served':>8} {'in-process':>10} {'same':>5}")
    for r in rows:
        same = "yes" if r["served"] == r["in_process"] else "NO"
        print(f"{r['model']:16} {r['split']:16} {r['examples']:8} {r['protocol']:>8} {r['served']:8.4f} "
              f"{r['in_process']:10.4f} {same:>5}")
    print_summary(result["report"])
    for command in result["failed"]:
        print(f"FAILED to build; rebuild just it with:\n  {command}")
    html, md = result["paths"]
    print(f"\ndemo finished in {result['seconds']} s\nreport: {html}\n        {md}")
    return 0 if all(r["served"] == r["in_process"] for r in rows) and not result["failed"] else 1
