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

from builder.core.handler import run_command

from . import bench, compare, deploy, footprint, overload, oversize, plan, report, run, soak, tune
from .options import duration, users_list  # noqa: F401 - the argument types, for their tests
from .run import parse_workers  # noqa: F401

# every subcommand, in --help's order: a module with HELP, add_arguments(parser) and run(args)
COMMANDS = {module.__name__.rsplit(".", 1)[1]: module
            for module in (run, report, plan, compare, deploy, tune, bench, footprint, soak, oversize, overload)}


def main(argv: list[str] | None = None, prog: str = "python -m loadtests") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=module.HELP))
    args = parser.parse_args(argv)
    return run_command(lambda: COMMANDS[args.command].run(args), verbose=args.verbose,
                       interrupted="\ninterrupted: Locust and any server this command started are stopped")
