"""`python -m loadtests`: load-test served models and report which variant to ship.

  python -m loadtests run --models minilm_fp32,minilm_int8 --users 1,4,16 --duration 30s --protocol grpc
  python -m loadtests run --models all --slo-p99-ms 50 --max-accuracy-drop 1.0 [--url grpc://host:8001]
  python -m loadtests report reports/<run>          (rebuild the report from results.json)
  python -m loadtests tune --model minilm_int8 --slo-p99-ms 50
  python -m loadtests bench [--models minilm_fp32,digits_fp32]
  python -m loadtests footprint --models all --memory-budget 16GB   (load time, memory per instance, how many fit)

Without --url the runner starts the embedded Triton server on the repository and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time


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


def memory_size(text: str) -> str:
    """A memory size such as 16GB, 512MiB or 2G, checked and kept as written (the report shows it)."""
    from builder.footprint import FootprintError, parse_size

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="Locust load test of served models, then the report")
    run.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    run.add_argument("--users", type=users_list, default=(1, 4, 16), help="load steps: users (default 1,4,16)")
    run.add_argument("--duration", type=duration, default=30.0, help="per step (default 30s)")
    run.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    run.add_argument("--batch-size", type=int, default=1, help="examples per request (default 1)")
    run.add_argument("--arrival-rate", type=float, default=0.0,
                     help="open loop: requests/s per user on a fixed schedule (default 0: closed loop)")
    run.add_argument("--workers", type=int, default=0, help="run Locust distributed: a master and N workers")
    run.add_argument("--perf-analyzer", action=argparse.BooleanOptionalAction, default=True,
                     help="cross-check each model with NVIDIA perf_analyzer at the highest users step (default on)")
    run.add_argument("--out", type=pathlib.Path, help="output folder (default reports/<date-time>)")
    run.add_argument("--footprint", action=argparse.BooleanOptionalAction, default=True,
                     help="first measure each model's load time and memory per instance (reloads it; default on)")
    add_memory_budget_argument(run)
    add_target_arguments(run)
    add_budget_arguments(run)

    report = commands.add_parser("report", help="rebuild report.html/.md from a run's results.json")
    report.add_argument("run_dir", type=pathlib.Path)
    report.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    add_budget_arguments(report)
    add_memory_budget_argument(report, default=None)

    tune = commands.add_parser("tune", help="sweep Triton settings of one model under an SLO")
    tune.add_argument("--model", required=True)
    tune.add_argument("--users", type=int, default=8, help="closed-loop users per point (default 8)")
    tune.add_argument("--duration", type=duration, default=10.0, help="per point (default 10s)")
    tune.add_argument("--budget", type=duration, default=600.0, help="stop sweeping after this long (default 10m)")
    tune.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    tune.add_argument("--slo-p99-ms", type=float, default=50.0)
    tune.add_argument("--write", action="store_true", help="write the best setting to the model's config.pbtxt")
    tune.add_argument("--out", type=pathlib.Path, help="output folder (default reports/tune-<model>-<date-time>)")
    add_target_arguments(tune)

    bench = commands.add_parser("bench", help="in-process ONNX Runtime vs served over HTTP and gRPC")
    bench.add_argument("--models", default="minilm_fp32,digits_fp32", help="served model names, comma-separated")
    bench.add_argument("--repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    bench.add_argument("--artifacts", type=pathlib.Path, default=pathlib.Path("artifacts"))
    bench.add_argument("--seconds", type=float, default=5.0, help="seconds per measured point")
    bench.add_argument("--repeats", type=int, default=2,
                       help="rounds of the Locust-vs-perf_analyzer and spinning comparisons (default 2)")
    bench.add_argument("--out", type=pathlib.Path, default=pathlib.Path("reports/bench.json"))

    footprint = commands.add_parser("footprint", help="load time and memory per instance of served models, written "
                                                      "to their build records")
    footprint.add_argument("--models", default="all", help="served model names, comma-separated, or `all` (default)")
    add_memory_budget_argument(footprint)
    add_target_arguments(footprint)
    args = parser.parse_args(argv)

    from builder.errors import BuilderError

    try:
        return {"run": cmd_run, "report": cmd_report, "tune": cmd_tune, "bench": cmd_bench,
                "footprint": cmd_footprint}[args.command](args)
    except BuilderError as e:
        print(f"error: {e}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: Locust and any server this command started are stopped", file=sys.stderr)
        return 130


@contextlib.contextmanager
def target_for(args):
    """The Target given by --url, or one of an embedded server started (and stopped) here."""
    from .run import Target

    if args.url:
        from client.triton import parse_url

        protocol, address = parse_url(args.url)
        host = address.rsplit(":", 1)[0]
        grpc_url = args.url if protocol == "grpc" else f"grpc://{host}:8001"
        http_url = args.http_url or (args.url if protocol == "http" else f"http://{host}:8000")
        yield Target(http_url, grpc_url, args.metrics_url or f"http://{host}:8002/metrics")
        return
    from builder.server import EmbeddedServer, free_port

    print(f"starting the embedded Triton server on {args.repository} ...", flush=True)
    with EmbeddedServer(args.repository, free_port(), free_port(), free_port()) as server:
        yield Target(server.http_url, server.grpc_url, server.metrics_url)


def cmd_run(args) -> int:
    from .report import build_report, read_records, write_report
    from .run import LoadSettings, LoadTestError, run_load

    if args.batch_size < 1 or args.workers < 0 or args.arrival_rate < 0:
        raise LoadTestError("--batch-size must be >= 1, --workers and --arrival-rate >= 0")
    out = args.out or pathlib.Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    settings = LoadSettings(users=args.users, duration_s=args.duration, protocol=args.protocol,
                            batch_size=args.batch_size, arrival_rate=args.arrival_rate, workers=args.workers)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = None
    try:
        with target_for(args) as target:
            results = run_load(models, target, settings, args.artifacts, out, perf_analyzer=True if args.perf_analyzer else (),
                               progress=lambda line: print(line, flush=True), footprint=args.footprint,
                               repository=args.repository, memory_budget=args.memory_budget)
    finally:  # partial results still get a report (Ctrl-C, a failed step)
        if (out / "results.json").is_file():
            results = json.loads((out / "results.json").read_text())
            if results["steps"]:
                report = build_report(results, read_records(args.artifacts), args.slo_p99_ms, args.max_accuracy_drop,
                                      memory_budget=args.memory_budget)
                md, html = write_report(report, out)
                print_summary(report)
                print(f"\nreport: {html}\n        {md}\nraw data: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def print_summary(report: dict) -> None:
    from .report import footprint_table, summary_table

    for source in report["sources"]:
        header, body = summary_table(report, source)
        keep = [0, 1, 2, 3, 7, 9, 10, 11, 13]
        print(f"\n{source}")
        print("  ".join(f"{header[i]:>14}" for i in keep))
        for row in body:
            print("  ".join(f"{row[i]:>14}" for i in keep))
        print(report["recommendations"][source]["text"])
        footprint_header, footprint_body = footprint_table(report, source)
        if footprint_body:
            print("  ".join(f"{h:>16}" for h in footprint_header))
            for row in footprint_body:
                print("  ".join(f"{c:>16}" for c in row))


def cmd_report(args) -> int:
    from .report import build_report, read_records, write_report
    from .run import LoadTestError

    path = args.run_dir / "results.json"
    if not path.is_file():
        raise LoadTestError(f"{path} does not exist", hint="pass the folder a `python -m loadtests run` wrote")
    report = build_report(json.loads(path.read_text()), read_records(args.artifacts), args.slo_p99_ms,
                          args.max_accuracy_drop, memory_budget=args.memory_budget)
    md, html = write_report(report, args.run_dir)
    print_summary(report)
    print(f"\nreport: {html}\n        {md}")
    return 0


def cmd_tune(args) -> int:
    from .tune import TuneSettings, print_tune, run_tune

    out = args.out or pathlib.Path("reports") / f"tune-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = TuneSettings(users=args.users, duration_s=args.duration, budget_s=args.budget, protocol=args.protocol,
                            slo_p99_ms=args.slo_p99_ms)
    with target_for(args) as target:
        result = run_tune(args.model, target, settings, args.repository, args.artifacts, out, write=args.write,
                          progress=lambda line: print(line, flush=True))
    print_tune(result)
    print(f"\nresults: {out / 'tune.json'}")
    return 0


def cmd_bench(args) -> int:
    from builder.errors import unknown_name
    from builder.repository import list_models

    from .bench import print_table, run_bench

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = list_models(args.repository)
    for model in models:
        if model not in known:
            raise unknown_name("model", model, known, hint="build it first with `builder build`")
    results = run_bench(models, args.repository, args.artifacts, args.seconds, repeats=max(args.repeats, 1),
                        raw=args.out.parent / f"{args.out.stem}-raw", progress=lambda line: print(line, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


def cmd_footprint(args) -> int:
    from builder.footprint import measure_models, write_footprint

    from .report import footprint_rows
    from .run import check_target, has_record

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
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(header)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in body:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    baseline = next(iter(measured.values()), {}).get("baseline")
    if baseline:
        print(f"\nEach instance is a Python backend stub process (embedded server); its RSS includes the interpreter "
              f"and onnxruntime: the smallest here, {baseline['model']}, is {baseline['rss_bytes'] / 1e6:.0f} MB.")
    print("written to: " + ", ".join(sorted({str(p) for p in written.values()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
