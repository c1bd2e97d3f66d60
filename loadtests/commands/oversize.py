"""`builder oversize` (= `python -m loadtests oversize`): small requests declaring huge tensors on every port: answer,
time, memory; and what the HTTP front costs at 1 user."""

from __future__ import annotations

import json
import pathlib

from builder.core.files import atomic_write

from ..oversize import print_oversize, run_oversize
from ..oversize import verdict as oversize_verdict

HELP = ('small requests declaring huge tensors on every port: answer, time, memory; and what the HTTP front '
        'costs at 1 user')


def add_arguments(oversize) -> None:
    oversize.add_argument("--models", required=True, help="served model names, comma-separated")
    oversize.add_argument("--requests", type=int, default=300, help="sequential requests per path and round (300)")
    oversize.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the hot-path comparison (5)")
    oversize.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    oversize.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/oversize.json"))


def run(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = run_oversize(args.repository, models, args.requests, args.rounds,
                           progress=lambda line: print(line, flush=True))
    print_oversize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(results, indent=1))
    print(f"\nresults: {args.out}")
    return 0 if oversize_verdict(results) else 1
