"""The arguments and helpers several load-test subcommands share: durations, user steps, the target server, the
budgets and the plan's options."""

from __future__ import annotations

import argparse
import contextlib
import pathlib

from builder.core.artifacts import read_records
from builder.serving.footprint import FootprintError, parse_size
from builder.serving.server import EmbeddedServer, free_port
from client.triton import parse_url

from ..report import build_report
from ..results import read_results
from ..rollout.plan import DEFAULT_HEADROOM, read_prices
from ..run import LoadTestError, Target


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


def plan_options(args) -> dict:
    return {"min_agreement": args.min_agreement, "target_qps": args.target_qps, "headroom": args.headroom,
            "prices": read_prices(args.prices) if args.prices else ()}


def load_report(args) -> dict:
    results = read_results(args.report)
    if args.target_qps is not None and args.target_qps <= 0:
        raise LoadTestError(f"--target-qps must be positive, got {args.target_qps:g}")
    return build_report(results, read_records(args.artifacts), args.slo_p99_ms,
                        args.max_accuracy_drop, **plan_options(args))
