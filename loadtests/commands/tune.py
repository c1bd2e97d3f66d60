"""`builder tune` (= `python -m loadtests tune`): sweep Triton settings of one model under an SLO."""

from __future__ import annotations

import pathlib
import time

from ..tune import TuneSettings, print_tune, run_tune
from .options import add_target_arguments, duration, target_for

HELP = 'sweep Triton settings of one model under an SLO'


def add_arguments(tune) -> None:
    tune.add_argument("--model", required=True)
    tune.add_argument("--users", type=int, default=8, help="closed-loop users per point (default 8)")
    tune.add_argument("--duration", type=duration, default=10.0, help="per point (default 10s)")
    tune.add_argument("--budget", type=duration, default=600.0, help="stop sweeping after this long (default 10m)")
    tune.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    tune.add_argument("--slo-p99-ms", type=float, default=50.0)
    tune.add_argument("--queue-budget", type=duration, default=150.0,
                      help="then the queue policy of the best point under open-loop overload, for this long "
                           "(default 150s; 0 skips it)")
    tune.add_argument("--overload-multiple", type=float, default=2.0,
                      help="that overload, as a multiple of the best point's throughput (default 2)")
    tune.add_argument("--write", action="store_true", help="write the best setting to the model's config.pbtxt")
    tune.add_argument("--out", type=pathlib.Path, help="output folder (default reports/tune-<model>-<date-time>)")
    add_target_arguments(tune)


def run(args) -> int:
    out = args.out or pathlib.Path("reports") / f"tune-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = TuneSettings(users=args.users, duration_s=args.duration, budget_s=args.budget, protocol=args.protocol,
                            slo_p99_ms=args.slo_p99_ms, queue_budget_s=args.queue_budget,
                            overload_multiple=args.overload_multiple)
    with target_for(args) as target:
        result = run_tune(args.model, target, settings, args.repository, args.artifacts, out, write=args.write,
                          progress=lambda line: print(line, flush=True))
    print_tune(result)
    print(f"\nresults: {out / 'tune.json'}")
    return 0
