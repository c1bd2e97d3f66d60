"""`builder`: build optimized variants of a model into a Triton repository, and serve them.

  builder build --model minilm --variant fp32        (a demo model)
  builder build --config my_model.yaml --variant fp32 (your model: see builder/core/spec.py)
  builder build --hf-model DIR --data data.csv --variant fp32,int8   (a Transformers classifier and its data)
  builder build --onnx-model m.onnx --data data.npz --variant fp32,int8,fp16   (an ONNX file and its data)
  builder build --torch-program m.pt --data data.npz --variant fp32,int8       (TorchScript or torch.export .pt2)
  builder serve [--repository model_repository]
  builder demo [--quick]    (build, serve, check, load-test and report on both demo models)
  builder load --models all --users 1,4,16   (and report, plan, compare, deploy, tune, bench, footprint, soak,
                                              oversize, overload: the load tests, also `python -m loadtests ...`)
  builder infer --model minilm_fp32 --text "..."   (and models, metadata: also `python -m client ...`)
"""

from __future__ import annotations

import argparse
import sys

from .commands import build, demo, serve
from .core.handler import run_command

# builder's own subcommands: a module each, with HELP, add_arguments(parser) and run(args)
COMMANDS = {"build": build, "serve": serve, "demo": demo}
# commands of the load tests and of the client under the one `builder` command: {builder's name: (package, its
# name there)}; `python -m loadtests run ...` and `python -m client infer ...` stay as they were
DELEGATED = {"load": ("loadtests", "run"), **{c: ("loadtests", c) for c in (
    "report", "plan", "compare", "deploy", "tune", "bench", "footprint", "soak", "oversize", "overload")},
             **{c: ("client", c) for c in ("infer", "models", "metadata")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="builder", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    # DeepSpeed's launcher puts --local_rank=N before the command; the trainer reads the same from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, module in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=module.HELP))
    for name, (package, their_name) in DELEGATED.items():  # listed in --help; run by `delegate` before parsing
        commands.add_parser(name, help=f"= python -m {package} {their_name} (`builder {name} --help`)")
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in DELEGATED:
        return delegate(argv[first], argv[:first], argv[first + 1:])
    args = parser.parse_args(argv)
    return run_command(lambda: COMMANDS[args.command].run(args), verbose=args.verbose)


def delegate(command: str, before: list[str], after: list[str]) -> int:
    """Run a load-test or client command with its own parser, error handler and exit code; `before`: builder's
    options before the command (only --verbose carries over)."""
    package, name = DELEGATED[command]
    if package == "loadtests":
        from loadtests.commands import main as their_main
    else:
        from client.commands import main as their_main
    return their_main([*(["--verbose"] if "--verbose" in before else []), name, *after],
                      prog=f"builder (= python -m {package})")
