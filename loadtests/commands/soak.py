"""`builder soak` (= `python -m loadtests soak`): mixed traffic to several models at a share of the measured maximum
for a long time: failures and memory growth."""

from __future__ import annotations

import pathlib
import time

from ..soak import SoakSettings, print_soak, run_soak, verdicts
from .options import duration

HELP = ('mixed traffic to several models at a share of the measured maximum for a long time: failures and '
        'memory growth')


def add_arguments(soak) -> None:
    soak.add_argument("--models", required=True, help="served model names, comma-separated")
    soak.add_argument("--duration", type=duration, default=600.0, help="soak length (default 10m)")
    soak.add_argument("--load", type=float, default=0.8, help="share of the measured maximum throughput (default 0.8)")
    soak.add_argument("--probe", type=duration, default=10.0, help="the closed-loop step measuring the maximum (10s)")
    soak.add_argument("--sample", type=duration, default=5.0, help="memory sampling interval (default 5s)")
    soak.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    soak.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    soak.add_argument("--out", type=pathlib.Path, help="output folder (default reports/soak-<date-time>)")


def run(args) -> int:
    out = args.out or pathlib.Path("reports") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SoakSettings(duration_s=args.duration, load=args.load, probe_s=args.probe, sample_s=args.sample)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = run_soak(models, args.repository, args.artifacts, settings, out,
                       progress=lambda line: print(line, flush=True))
    print_soak(results)
    print(f"\nresults: {out / 'soak.json'}")
    return 0 if all(ok for _, ok in verdicts(results)) else 1
