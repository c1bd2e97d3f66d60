"""`builder deploy` (= `python -m loadtests deploy`): a Kustomize overlay that deploys the chosen variant, sized by the
plan (plus a KEDA component and a KServe canary)."""

from __future__ import annotations

import pathlib

from ..rollout.deploy import choose_variant, models_to_load, write_overlay
from .options import add_budget_arguments, add_plan_arguments, load_report

HELP = ('a Kustomize overlay that deploys the chosen variant, sized by the plan (plus a KEDA component and a '
        'KServe canary)')


def add_arguments(deploy) -> None:
    deploy.add_argument("--report", type=pathlib.Path, required=True, help="a run's folder (holds results.json)")
    deploy.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    deploy.add_argument("--out", type=pathlib.Path, default=pathlib.Path("deploy"))
    deploy.add_argument("--model", help="the source model (minilm, digits) when the run holds several")
    deploy.add_argument("--variant", help="deploy this served model instead of the recommended one (e.g. "
                                          "minilm_int8); it must meet the SLO and budgets")
    deploy.add_argument("--replicas", type=int, help="override the plan's replicas (e.g. 1 to re-measure one)")
    deploy.add_argument("--canary-percent", type=int, default=10,
                        help="KServe: share of traffic for the new variant (default 10)")
    deploy.add_argument("--queue-ms", type=float,
                        help="KEDA: scale out above this mean queue time per request (default: 10 %% of the SLO)")
    deploy.add_argument("--prometheus-url", default="http://prometheus.monitoring.svc:9090",
                        help="KEDA: the Prometheus that scrapes Triton")
    deploy.add_argument("--keda", action="store_true",
                        help="scale with KEDA on Triton's queue time instead of the base's CPU HPA (the optional "
                             "component components/queue-time is always written; this lists it)")
    deploy.add_argument("--no-text-endpoint", action="store_true",
                        help="do not also load the variant's raw-text ensemble (its tokenizer and postprocess)")
    add_budget_arguments(deploy)
    add_plan_arguments(deploy, required=True)


def run(args) -> int:
    report = load_report(args)
    choice = choose_variant(report, args.model, args.variant, args.slo_p99_ms)
    models = models_to_load(choice.model, choice.row.entry, text_endpoint=not args.no_text_endpoint)
    paths = write_overlay(args.out, models, choice.line, canary_percent=args.canary_percent,
                          queue_ms=args.queue_ms or args.slo_p99_ms / 10, prometheus_url=args.prometheus_url,
                          replicas=args.replicas, keda=args.keda)
    line = choice.line
    print(f"`{choice.model}` ({choice.why}): {args.replicas or line.replicas} replica(s) x {line.cores} CPU, "
          f"{line.memory_mib} Mi; loads {', '.join(models)}")
    for path in paths:
        print(f"  wrote {path}")
    print(f"apply: kubectl apply -k {args.out}"
          + ("" if args.keda else "   (KEDA on queue time instead of CPU: write it with --keda)"))
    return 0
