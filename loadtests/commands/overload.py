"""`builder overload` (= `python -m loadtests overload`): open-loop Poisson load at multiples of the measured maximum:
goodput, p99, rejections, memory, recovery."""

from __future__ import annotations

import json
import pathlib

from builder.core.files import atomic_write

from ..overload import OverloadSettings, print_overload, run_overload
from ..run import LoadTestError
from .options import duration

HELP = ('open-loop Poisson load at multiples of the measured maximum: goodput, p99, rejections, memory, '
        'recovery')


def add_arguments(overload) -> None:
    overload.add_argument("--models", required=True, help="served model names, comma-separated")
    overload.add_argument("--multiples", default="0.5,1,1.5,2,3", help="offered load as multiples of the "
                          "closed-loop maximum (0.5,1,1.5,2,3)")
    overload.add_argument("--seconds", type=duration, default=10.0, help="per step (10s)")
    overload.add_argument("--slo-p99-ms", type=float, default=50.0, help="an answer later than this is not goodput")
    overload.add_argument("--users", type=int, default=8, help="clients of the closed-loop maximum (8)")
    overload.add_argument("--without-policy", action="store_true",
                          help="also run each model without its queue policy (Triton's unbounded queue)")
    overload.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    overload.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    overload.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/overload.json"))


def run(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        multiples = tuple(float(m) for m in args.multiples.split(","))
    except ValueError as e:
        raise LoadTestError(f"--multiples must be numbers separated by commas, got {args.multiples!r}") from e
    settings = OverloadSettings(multiples=multiples, seconds=args.seconds, slo_ms=args.slo_p99_ms, users=args.users)
    results = run_overload(args.repository, models, args.artifacts, settings, args.without_policy,
                           progress=lambda line: print(line, flush=True))
    print_overload(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(results, indent=1))
    print(f"\nresults: {args.out}")
    return 0
