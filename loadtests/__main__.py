"""`python -m loadtests`: measure served models.

  python -m loadtests bench [--models minilm_fp32,digits_fp32] [--seconds 5] [--out reports/bench.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="in-process ONNX Runtime vs served over HTTP and gRPC")
    bench.add_argument("--models", default="minilm_fp32,digits_fp32", help="served model names, comma-separated")
    bench.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    bench.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    bench.add_argument("--seconds", type=float, default=5.0, help="seconds per measured point")
    bench.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/bench.json"))
    args = parser.parse_args(argv)

    from builder.errors import BuilderError, unknown_name
    from builder.repository import list_models

    from .bench import print_table, run_bench

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        known = list_models(args.repository)
        for model in models:
            if model not in known:
                raise unknown_name("model", model, known, hint="build it first with `builder build`")
        results = run_bench(models, args.repository, args.artifacts, args.seconds)
    except BuilderError as e:
        print(f"error: {e}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
