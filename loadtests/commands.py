"""`python -m loadtests`: load-test served models and report which variant to ship.

  python -m loadtests run --models minilm_fp32,minilm_int8 --users 1,4,16 --duration 30s --protocol grpc
  python -m loadtests run --models all --slo-p99-ms 50 --max-accuracy-drop 1.0 [--url grpc://host:8001]
  python -m loadtests report reports/<run>          (rebuild the report from results.json)
  python -m loadtests plan --report reports/<run> --target-qps 2000 --slo-p99-ms 50 [--prices prices.yaml]
  python -m loadtests compare BASELINE/results.json NEW/results.json   (exit 1 on a regression beyond noise)
  python -m loadtests deploy --report reports/<run> --target-qps 2000 --out deploy/   (Kustomize overlay)
  python -m loadtests tune --model minilm_int8 --slo-p99-ms 50
  python -m loadtests bench [--models minilm_fp32,digits_fp32]
  python -m loadtests footprint --models all --memory-budget 16GB   (load time, memory per instance, how many fit)
  python -m loadtests soak --models digits_fp32,minilm_fp32 --duration 10m   (failures and memory growth at 80 %)
  python -m loadtests oversize --models digits_fp32,minilm_fp32   (small requests declaring 20 GB; the front's cost)
  python -m loadtests overload --models minilm_int8 --without-policy   (open-loop Poisson load at 0.5-3x the maximum)

Without --url the runner starts the embedded Triton server on the repository and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

from builder.core.artifacts import read_records
from builder.core.console import print_table
from builder.core.errors import unknown_name
from builder.core.files import atomic_write
from builder.core.handler import run_command
from builder.serving.footprint import FootprintError, measure_models, parse_size, write_footprint
from builder.serving.repository import list_models
from builder.serving.server import EmbeddedServer, free_port
from client.triton import parse_url

from .bench import print_table as print_bench_table
from .bench import run_bench
from .generator_bench import print_table as print_generator_table
from .generator_bench import run_generator_bench
from .overload import OverloadSettings, print_overload, run_overload
from .oversize import print_oversize, run_oversize
from .oversize import verdict as oversize_verdict
from .report import build_report, footprint_rows, plan_table, plan_text, write_report
from .results import read_results, results_file
from .rollout.compare import compare_runs, tables
from .rollout.deploy import DeployError, models_to_load, write_overlay
from .rollout.plan import DEFAULT_HEADROOM, read_prices
from .run import LoadSettings, LoadTestError, Target, check_target, has_record, run_load
from .soak import SoakSettings, print_soak, run_soak, verdicts
from .summary import print_summary
from .tune import TuneSettings, print_tune, run_tune


def duration(text: str) -> float:
    """`30s`, `2m` or `45` (seconds)."""
    text = text.strip().lower()
    scale = 60.0 if text.endswith("m") else 1.0
    try:
        value = float(text.rstrip("sm")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 30s, 2m or 45)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def users_list(text: str) -> tuple[int, ...]:
    try:
        users = tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--users takes comma-separated integers, got {text!r}") from None
    if not users or min(users) < 1:
        raise argparse.ArgumentTypeError("--users needs at least one step of 1 or more users")
    return users


def add_target_arguments(parser) -> None:
    parser.add_argument("--url", help="a running server (grpc://host:8001 or http://host:8000); default: start the "
                                      "embedded server on --repository")
    parser.add_argument("--http-url", help="with --url: the server's HTTP URL (default: host:8000)")
    parser.add_argument("--metrics-url", help="with --url: Triton's metrics (default: http://host:8002/metrics)")
    parser.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    parser.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"),
                        help="the builder's artifacts: test splits and build records")
    parser.add_argument("--admin-key-file", help="the key of the server's locked admin APIs (default: "
                                                 "$TRITONKIT_ADMIN_KEY, or the key a local `builder serve` generated)")


def memory_size(text: str) -> str:
    """A memory size such as 16GB, 512MiB or 2G, checked and kept as written (the report shows it)."""

    try:
        parse_size(text)
    except FootprintError as e:
        raise argparse.ArgumentTypeError(f"{e} ({e.hint})") from None
    return text.strip()


def add_memory_budget_argument(parser, default: str | None = "16GB") -> None:
    parser.add_argument("--memory-budget", type=memory_size, default=default,
                        help="memory for the instances of one model: how many fit in it (16GB, 512MiB, 2Gi; "
                             + (f"default {default})" if default else "default: the run's"))


def add_budget_arguments(parser) -> None:
    parser.add_argument("--slo-p99-ms", type=float, default=50.0, help="latency budget: p99 in ms (default 50)")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="accuracy budget: points below fp32 (default 1.0)")
    parser.add_argument("--min-agreement", type=percent, default=0.0,
                        help="agreement budget: top-1 agreement with fp32 a variant needs, in %% (e.g. 95; "
                             "default 0: none)")


def percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (e.g. 95)") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"a percentage is within 0..100, got {value:g}")
    return value / 100


def add_plan_arguments(parser, required: bool = False) -> None:
    parser.add_argument("--target-qps", type=float, required=required,
                        help="requests/s to plan for: replicas, cores, memory and cost per variant")
    parser.add_argument("--prices", type=pathlib.Path,
                        help="instance types and $/h (see loadtests/prices.example.yaml; its figures are examples)")
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                        help=f"plan each replica at (1 - headroom) of its measured rate (default {DEFAULT_HEADROOM})")


def run_arguments(run) -> None:
    run.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    run.add_argument("--users", type=users_list, default=(1, 4, 16), help="load steps: users (default 1,4,16)")
    run.add_argument("--duration", type=duration, default=30.0, help="per step (default 30s)")
    run.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    run.add_argument("--batch-size", type=int, default=1, help="examples per request (default 1)")
    run.add_argument("--arrival-rate", type=float, default=0.0,
                     help="open loop: requests/s per user on a fixed schedule (default 0: closed loop)")
    run.add_argument("--workers", default="0",
                     help="run Locust distributed: a master and N workers; `auto`: per model, from a 2 s "
                          "single-process probe (one process unless it is generator-bound; then up to the cores)")
    run.add_argument("--windows", type=int, default=3,
                     help="equal windows per step for the throughput and p99 intervals (default 3; ties need >= 3)")
    run.add_argument("--repeats", type=int, default=1,
                     help="run every step this many times, interleaved; the interval spans all their windows, so it "
                          "also holds run-to-run noise (default 1; costs N x the time)")
    run.add_argument("--perf-analyzer", action=argparse.BooleanOptionalAction, default=True,
                     help="cross-check each model with NVIDIA perf_analyzer at the highest users step (default on)")
    run.add_argument("--out", type=pathlib.Path, help="output folder (default reports/<date-time>)")
    run.add_argument("--footprint", action=argparse.BooleanOptionalAction, default=True,
                     help="first measure each model's load time and memory per instance (reloads it; default on)")
    add_memory_budget_argument(run)
    add_target_arguments(run)
    add_budget_arguments(run)
    add_plan_arguments(run)


def report_arguments(report) -> None:
    report.add_argument("run_dir", type=pathlib.Path)
    report.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    add_budget_arguments(report)
    add_memory_budget_argument(report, default=None)
    add_plan_arguments(report)


def plan_arguments(plan) -> None:
    plan.add_argument("--report", type=pathlib.Path, required=True, help="a run's folder (holds results.json)")
    plan.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"),
                      help="build records (default: the copy in results.json)")
    add_budget_arguments(plan)
    add_plan_arguments(plan, required=True)


def compare_arguments(compare) -> None:
    compare.add_argument("baseline", type=pathlib.Path, help="BASELINE/results.json")
    compare.add_argument("new", type=pathlib.Path, help="NEW/results.json")
    compare.add_argument("--se-multiple", type=float, default=2.0,
                         help="accuracy regressed when it fell by more than this many standard errors (default 2)")
    compare.add_argument("--margin", type=float, default=0.0,
                         help="widen every interval by this fraction (e.g. 0.1) on a runner whose load changes "
                              "between runs (default 0)")
    compare.add_argument("--allow-points", action="store_true",
                         help="also gate steps measured without windows (any difference then counts)")


def deploy_arguments(deploy) -> None:
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


def tune_arguments(tune) -> None:
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


def bench_arguments(bench) -> None:
    bench.add_argument("--models", default="minilm_fp32,digits_fp32", help="served model names, comma-separated")
    bench.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    bench.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    bench.add_argument("--seconds", type=float, default=5.0, help="seconds per measured point")
    bench.add_argument("--repeats", type=int, default=2,
                       help="rounds of the Locust-vs-perf_analyzer and spinning comparisons (default 2)")
    bench.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/bench.json"))
    bench.add_argument("--generator-only", action="store_true",
                       help="only Locust (one process and auto workers) vs perf_analyzer, gRPC and HTTP, with the CPU "
                            "each side spends per request (loadtests/generator_bench.py)")


def footprint_arguments(footprint) -> None:
    footprint.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    add_memory_budget_argument(footprint)
    add_target_arguments(footprint)


def soak_arguments(soak) -> None:
    soak.add_argument("--models", required=True, help="served model names, comma-separated")
    soak.add_argument("--duration", type=duration, default=600.0, help="soak length (default 10m)")
    soak.add_argument("--load", type=float, default=0.8, help="share of the measured maximum throughput (default 0.8)")
    soak.add_argument("--probe", type=duration, default=10.0, help="the closed-loop step measuring the maximum (10s)")
    soak.add_argument("--sample", type=duration, default=5.0, help="memory sampling interval (default 5s)")
    soak.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    soak.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    soak.add_argument("--out", type=pathlib.Path, help="output folder (default reports/soak-<date-time>)")


def oversize_arguments(oversize) -> None:
    oversize.add_argument("--models", required=True, help="served model names, comma-separated")
    oversize.add_argument("--requests", type=int, default=300, help="sequential requests per path and round (300)")
    oversize.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the hot-path comparison (5)")
    oversize.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    oversize.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/oversize.json"))


def overload_arguments(overload) -> None:
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


def main(argv: list[str] | None = None, prog: str = "python -m loadtests") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    command = COMMANDS[args.command][1]
    return run_command(lambda: command(args), verbose=args.verbose,
                       interrupted="\ninterrupted: Locust and any server this command started are stopped")


@contextlib.contextmanager
def target_for(args):
    """The Target given by --url, or one of an embedded server started (and stopped) here."""

    if args.url:
        protocol, address = parse_url(args.url)
        host = address.rsplit(":", 1)[0]
        grpc_url = args.url if protocol == "grpc" else f"grpc://{host}:8001"
        http_url = args.http_url or (args.url if protocol == "http" else f"http://{host}:8000")
        yield Target(http_url, grpc_url, args.metrics_url or f"http://{host}:8002/metrics", args.admin_key_file)
        return

    print(f"starting the embedded Triton server on {args.repository} ...", flush=True)
    with EmbeddedServer(args.repository, free_port(), free_port(), free_port(), admin_key_file=args.admin_key_file,
                        on_event=lambda line: print(f"server: {line}", flush=True)) as server:
        yield Target(server.http_url, server.grpc_url, server.metrics_url, args.admin_key_file)


def parse_workers(text: str) -> tuple[int, bool]:
    """--workers N or `auto` -> (workers, auto_workers). Raises LoadTestError for anything else."""
    if text.strip().lower() == "auto":
        return 0, True
    try:
        workers = int(text)
    except ValueError:
        workers = -1
    if workers < 0:
        raise LoadTestError(f"--workers must be a whole number >= 0 or `auto`, got `{text}`",
                            hint="e.g. --workers 2, or --workers auto to choose from a probe step")
    return workers, False


def cmd_run(args) -> int:
    workers, auto_workers = parse_workers(args.workers)
    if args.batch_size < 1 or args.arrival_rate < 0:
        raise LoadTestError("--batch-size must be >= 1, --arrival-rate >= 0")
    out = args.out or pathlib.Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    if args.windows < 1 or args.repeats < 1:
        raise LoadTestError("--windows and --repeats must be >= 1 (3 or more windows to tell ties)")
    settings = LoadSettings(users=args.users, duration_s=args.duration, protocol=args.protocol,
                            batch_size=args.batch_size, arrival_rate=args.arrival_rate, workers=workers,
                            auto_workers=auto_workers, windows=args.windows, repeats=args.repeats)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = None
    try:
        with target_for(args) as target:
            results = run_load(models, target, settings, args.artifacts, out, perf_analyzer=True if args.perf_analyzer else (),
                               progress=lambda line: print(line, flush=True), footprint=args.footprint,
                               repository=args.repository, memory_budget=args.memory_budget)
    finally:  # partial results still get a report (Ctrl-C, a failed step)
        if results_file(out).is_file():
            results = read_results(out)
            if results.steps:
                report = build_report(results, read_records(args.artifacts), args.slo_p99_ms, args.max_accuracy_drop,
                                      memory_budget=args.memory_budget, **plan_options(args))
                md, html = write_report(report, out)
                print_summary(report)
                print(f"\nreport: {html}\n        {md}\nraw data: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def plan_options(args) -> dict:
    return {"min_agreement": args.min_agreement, "target_qps": args.target_qps, "headroom": args.headroom,
            "prices": read_prices(args.prices) if args.prices else ()}


def cmd_report(args) -> int:
    results = read_results(args.run_dir)
    overload = args.run_dir / "overload.json"  # `python -m loadtests overload --out <run>/overload.json`
    report = build_report(results, read_records(args.artifacts), args.slo_p99_ms,
                          args.max_accuracy_drop, memory_budget=args.memory_budget, **plan_options(args),
                          overload=json.loads(overload.read_text()) if overload.is_file() else None)
    md, html = write_report(report, args.run_dir)
    print_summary(report)
    print(f"\nreport: {html}\n        {md}")
    return 0


def load_report(args) -> dict:
    results = read_results(args.report)
    if args.target_qps is not None and args.target_qps <= 0:
        raise LoadTestError(f"--target-qps must be positive, got {args.target_qps:g}")
    return build_report(results, read_records(args.artifacts), args.slo_p99_ms,
                        args.max_accuracy_drop, **plan_options(args))


def cmd_plan(args) -> int:
    report = load_report(args)
    for source in report["sources"]:
        print(f"\n{source}")
        header, body = plan_table(report, source)
        print_table(header, body)
        print(plan_text(report, source))
    return 0 if any(p["lines"] for p in report["plans"].values()) else 1


def cmd_compare(args) -> int:
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


def cmd_deploy(args) -> int:
    report = load_report(args)
    sources = report["sources"]
    source = args.model or (sources[0] if len(sources) == 1 else None)
    if source not in sources:
        raise DeployError(f"pick a source model with --model: the run holds {', '.join(sources)}"
                          if source is None else f"unknown --model `{source}`", hint=f"known: {', '.join(sources)}")
    plan = report["plans"][source]
    lines = {line["model"]: line for line in plan["lines"]}
    chosen = args.variant or plan["cheapest"] or report["recommendations"][source]["model"]
    if chosen not in lines:
        raise DeployError(f"`{chosen}` does not meet p99 <= {args.slo_p99_ms:g} ms and the budgets in this run"
                          if chosen else report["recommendations"][source]["text"],
                          hint="planned variants: " + (", ".join(lines) or "none"))
    row = next(r for r in report["rows"] if r.triton_model == chosen)
    models = models_to_load(chosen, row.entry, text_endpoint=not args.no_text_endpoint)
    paths = write_overlay(args.out, models, lines[chosen], canary_percent=args.canary_percent,
                          queue_ms=args.queue_ms or args.slo_p99_ms / 10, prometheus_url=args.prometheus_url,
                          replicas=args.replicas, keda=args.keda)
    why = "cheapest meeting SLO and budgets" if chosen == plan["cheapest"] and not args.variant else (
        "chosen with --variant" if args.variant else "recommended")
    line = lines[chosen]
    print(f"`{chosen}` ({why}): {args.replicas or line['replicas']} replica(s) x {line['cores']} CPU, "
          f"{line['memory_mib']} Mi; loads {', '.join(models)}")
    for path in paths:
        print(f"  wrote {path}")
    print(f"apply: kubectl apply -k {args.out}"
          + ("" if args.keda else "   (KEDA on queue time instead of CPU: write it with --keda)"))
    return 0


def cmd_tune(args) -> int:
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


def cmd_bench(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = list_models(args.repository)
    for model in models:
        if model not in known:
            raise unknown_name("model", model, known, hint="build it first with `builder build`")
    raw = args.out.parent / f"{args.out.stem}-raw"
    progress = lambda line: print(line, flush=True)  # noqa: E731
    if args.generator_only:
        results = run_generator_bench(models, args.repository, args.artifacts, args.seconds, max(args.repeats, 1),
                                      raw, progress=progress)
    else:
        results = run_bench(models, args.repository, args.artifacts, args.seconds, repeats=max(args.repeats, 1),
                            raw=raw, progress=progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(results, indent=2))
    (print_generator_table if args.generator_only else print_bench_table)(results)
    print(f"\nwrote {args.out}")
    return 0


def cmd_footprint(args) -> int:
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


def cmd_soak(args) -> int:
    out = args.out or pathlib.Path("reports") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SoakSettings(duration_s=args.duration, load=args.load, probe_s=args.probe, sample_s=args.sample)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = run_soak(models, args.repository, args.artifacts, settings, out,
                       progress=lambda line: print(line, flush=True))
    print_soak(results)
    print(f"\nresults: {out / 'soak.json'}")
    return 0 if all(ok for _, ok in verdicts(results)) else 1


def cmd_oversize(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = run_oversize(args.repository, models, args.requests, args.rounds,
                           progress=lambda line: print(line, flush=True))
    print_oversize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(results, indent=1))
    print(f"\nresults: {args.out}")
    return 0 if oversize_verdict(results) else 1


def cmd_overload(args) -> int:
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


# every command: (its arguments, what runs it, its help); `main` builds the parser from this table
COMMANDS = {
    "run": (run_arguments, cmd_run,
            "Locust load test of served models, then the report"),
    "report": (report_arguments, cmd_report,
               "rebuild report.html/.md from a run's results.json (and the overload.json in the same folder, if "
               "there)"),
    "plan": (plan_arguments, cmd_plan,
             "replicas, cores, memory and cost per variant for a target rate"),
    "compare": (compare_arguments, cmd_compare,
                "regression gate: exit 1 when NEW is worse than BASELINE beyond the measured intervals or the "
                "accuracy's standard error"),
    "deploy": (deploy_arguments, cmd_deploy,
               "a Kustomize overlay that deploys the chosen variant, sized by the plan (plus a KEDA component "
               "and a KServe canary)"),
    "tune": (tune_arguments, cmd_tune,
             "sweep Triton settings of one model under an SLO"),
    "bench": (bench_arguments, cmd_bench,
              "in-process ONNX Runtime vs served over HTTP and gRPC"),
    "footprint": (footprint_arguments, cmd_footprint,
                  "load time and memory per instance of served models, written to their build records"),
    "soak": (soak_arguments, cmd_soak,
             "mixed traffic to several models at a share of the measured maximum for a long time: failures and "
             "memory growth"),
    "oversize": (oversize_arguments, cmd_oversize,
                 "small requests declaring huge tensors on every port: answer, time, memory; and what the HTTP "
                 "front costs at 1 user"),
    "overload": (overload_arguments, cmd_overload,
                 "open-loop Poisson load at multiples of the measured maximum: goodput, p99, rejections, memory, "
                 "recovery"),
}
