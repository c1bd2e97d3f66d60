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
import pathlib
import shlex
import signal
import sys
import time

from loadtests.summary import print_summary

from .core.console import print_table
from .core.errors import BuilderError, ConfigError
from .core.files import atomic_write
from .core.handler import run_command
from .core.names import model_name
from .core.record import BuildEntry
from .demo import run_demo
from .pipeline import processes
from .pipeline.build import Gates, build_variant
from .pipeline.models import resolve_spec
from .pipeline.sources import files, hf, onnxfile, torchprogram
from .pipeline.train import TrainingOverrides, train_config
from .pipeline.variants import steps
from .serving.front import MAX_BODY_MB
from .serving.repository import check_no_legacy_names, list_models
from .serving.server import EmbeddedServer
from .serving.text_endpoint import text_inputs
from .serving.tritonconfig import ServingConfig

# commands of the load tests and of the client under the one `builder` command: {builder's name: (package, its
# name there)}; `python -m loadtests run ...` and `python -m client infer ...` stay as they were
DELEGATED = {"load": ("loadtests", "run"), **{c: ("loadtests", c) for c in (
    "report", "plan", "compare", "deploy", "tune", "bench", "footprint", "soak", "oversize", "overload")},
             **{c: ("client", c) for c in ("infer", "models", "metadata")}}
DEFAULT_REPOSITORY = pathlib.Path("model_repository")
DEFAULT_ARTIFACTS = pathlib.Path("artifacts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="builder", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    # DeepSpeed's launcher puts --local_rank=N before the command; the trainer reads the same from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    build_arguments(commands.add_parser("build", help="build variants into the model repository"))
    serve_arguments(commands.add_parser("serve", help="serve the repository on the embedded Triton server until "
                                                      "Ctrl-C"))
    demo_arguments(commands.add_parser("demo", help="build, serve, check and load-test both demo models (or "
                                                    "yours) end to end, and write the report"))
    for name, (package, their_name) in DELEGATED.items():  # listed in --help; run by `delegate` before parsing
        commands.add_parser(name, help=f"= python -m {package} {their_name} (`builder {name} --help`)")
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in DELEGATED:
        return delegate(argv[first], argv[:first], argv[first + 1:])
    args = parser.parse_args(argv)
    command = {"build": cmd_build, "serve": cmd_serve, "demo": cmd_demo}[args.command]
    return run_command(lambda: command(args), verbose=args.verbose)


def model_arguments(parser) -> None:
    """The model to build: a demo model, a spec, or a model as it lies on disk with its data (build and demo)."""
    parser.add_argument("--model", help="a demo model: digits or minilm")
    parser.add_argument("--config", type=pathlib.Path, help="YAML spec of your own model")
    parser.add_argument("--hf-model", type=pathlib.Path, metavar="DIR",
                       help="a Hugging Face Transformers directory as save_pretrained wrote it, with its "
                            "tokenizer: a sequence or token classifier, or a sentence embedder (sentence-transformers "
                            "or a bare encoder); the spec inferred goes to <artifacts>/<name>/spec.yaml")
    parser.add_argument("--onnx-model", type=pathlib.Path, metavar="FILE",
                       help="an ONNX file with a dynamic batch axis: fp32 as given and the post-training variants "
                            "(fp16, int8); the spec inferred goes to <artifacts>/<name>/spec.yaml")
    parser.add_argument("--torch-program", type=pathlib.Path, metavar="FILE",
                       help="a TorchScript program (torch.jit.save) or a torch.export program (.pt2), exported "
                            "once to <artifacts>/<name>/program.onnx, then built as --onnx-model")
    parser.add_argument("--data", action="append", metavar="[SPLIT=]FILE",
                       help="with --hf-model a CSV, JSON-lines or Parquet file, with --onnx-model an .npz or an image "
                            "folder (a subfolder per class), with --torch-program an .npz (one array per "
                            "input, and `labels`) or, for a one-input image model, an image folder: split 70/10/20 with a fixed seed, or one per split: "
                            "--data train=a.csv --data validation=b.csv --data test=c.csv")
    parser.add_argument("--text-column", help="with --hf-model: the column holding the text, a token classifier's "
                                             "words (default: text)")
    parser.add_argument("--label-column", help="with --hf-model: the column holding the label, a class name of "
                                              "config.json's id2label or its index, a tag per word for a token "
                                              "classifier, any class name for an embedder (default: label)")
    parser.add_argument("--name", help="with --hf-model, --onnx-model or --torch-program: the model's name (default: the directory's "
                                      "or file's name)")


def build_arguments(build) -> None:
    model_arguments(build)
    build.add_argument("--variant", default="fp32", help="variant name(s), comma-separated, or `all` (default: fp32)")
    build.add_argument("--repository", type=pathlib.Path, default=DEFAULT_REPOSITORY)
    build.add_argument("--artifacts", type=pathlib.Path, default=DEFAULT_ARTIFACTS,
                       help="caches, data splits and build records (outside the Triton repository)")
    build.add_argument("--instances", type=int, default=None,
                       help="Triton instances per model (per GPU with --device gpu; default: the model spec's "
                            "`instances`, else 1; minilm: 2)")
    build.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per instance (default: cores / instances)")
    build.add_argument("--max-queue-delay-us", type=int, default=0, help="dynamic batching queue delay (default: 0)")
    build.add_argument("--slo-p99-ms", type=float, default=None,
                       help="p99 latency budget the queue policy is derived from: requests wait in Triton's queue "
                            "at most half of it (default: the model spec's `slo_p99_ms`, else 50)")
    build.add_argument("--no-queue-policy", action="store_true",
                       help="write no queue policy: Triton's unbounded queue without timeout (for comparisons)")
    build.add_argument("--max-accuracy-drop", type=float, default=1.0,
                       help="gate: points of accuracy a variant may lose vs fp32 (default: 1.0)")
    build.add_argument("--min-agreement", type=float,
                       help="gate: least top-1 agreement with fp32 (0..1) on the first split (default: no gate)")
    build.add_argument("--force", action="store_true", help="write variants to the repository even if a gate fails")
    build.add_argument("--rebuild", action="store_true",
                       help="train and measure again a variant refused before with the same recipe and inputs "
                            "(default: reuse its verdict from the build record)")
    build.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                       help="instance kind in config.pbtxt: KIND_CPU (default), or KIND_GPU for Triton on GPUs")
    build.add_argument("--tensorrt", action="store_true",
                       help="with --device gpu: ONNX Runtime's TensorRT accelerator, FP16, engines cached in /tmp")
    build.add_argument("--text-endpoint", action="store_true",
                       help="text models: also write the raw-text ensemble <model>_<variant>_text (strings in)")


def serve_arguments(serve) -> None:
    serve.add_argument("--repository", type=pathlib.Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model-control", choices=("explicit", "none", "poll"), default="explicit",
                       help="explicit (default): load all now, load/unload later through the API")
    serve.add_argument("--log-file", type=pathlib.Path, help="server log (default: a temporary file, printed)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address HTTP, gRPC and metrics listen on (default 127.0.0.1: this machine only; "
                            "0.0.0.0: every interface)")
    serve.add_argument("--admin-key-file", type=pathlib.Path,
                       help="file holding the key of the locked admin APIs (default: $TRITONKIT_ADMIN_KEY, else a "
                            "key generated for this run; see docs/security.md)")
    serve.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB,
                       help=f"largest HTTP request body the front accepts, after inflating (default {MAX_BODY_MB} MiB)")


def demo_arguments(demo) -> None:
    model_arguments(demo)  # none given: both demo models
    demo.add_argument("--repository", type=pathlib.Path, default=DEFAULT_REPOSITORY)
    demo.add_argument("--artifacts", type=pathlib.Path, default=DEFAULT_ARTIFACTS)
    demo.add_argument("--examples", type=int, default=500, help="examples per split sent through the server (default 500)")
    demo.add_argument("--rebuild", action="store_true", help="rebuild models already in the repository")
    demo.add_argument("--quick", action="store_true", help="a first look: fp32 and int8 only, short load steps")
    demo.add_argument("--reports", type=pathlib.Path, default=pathlib.Path("reports"), help="where the report goes")
    demo.add_argument("--slo-p99-ms", type=float, default=50.0, help="latency budget of the recommendation")
    demo.add_argument("--max-accuracy-drop", type=float, default=1.0, help="accuracy budget, points below fp32")


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


def cmd_build(args) -> int:
    try:
        return _build(args)
    finally:
        processes.finish()  # every rank, rank 0's writes done, before any rank exits


def _build(args) -> int:
    if args.variant != "all":
        for variant in args.variant.split(","):
            if variant.strip():
                steps(variant.strip())  # an unknown name fails before --hf-model writes its spec
    spec, source = resolve_build_spec(args)
    variants = list(spec.standard_variants) if args.variant == "all" else [
        v.strip() for v in args.variant.split(",") if v.strip()]
    for variant in variants:
        steps(variant)  # unknown names and impossible orders fail before any work starts
        for s in steps(variant):
            config = s.config(spec.variants)  # so do unknown options and bad values
            if isinstance(config, TrainingOverrides):
                train_config(spec, config)  # and a bad training section
    # under a launcher, rank 0's disk decides for every rank: all of them must build the same variants
    if "fp32" not in variants and not processes.decide(
            lambda: (args.artifacts / spec.name / "fp32" / "outputs.npz").is_file()):
        if processes.is_main():
            print(f"{spec.name}: building the fp32 baseline first (every variant is measured against it)")
        variants.insert(0, "fp32")
    if (args.instances is not None and args.instances < 1) or (args.threads is not None and args.threads < 1) or args.max_queue_delay_us < 0:
        raise ConfigError("--instances and --threads must be >= 1, --max-queue-delay-us >= 0")
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        raise ConfigError(f"--min-agreement is a fraction of examples, 0..1, got {args.min_agreement}",
                          hint="e.g. --min-agreement 0.95 for 95 % top-1 agreement with fp32")
    serving = ServingConfig(instances=args.instances, intra_op_threads=args.threads,
                            max_queue_delay_us=args.max_queue_delay_us, device=args.device, tensorrt=args.tensorrt,
                            text_endpoint=args.text_endpoint, slo_p99_ms=args.slo_p99_ms,
                            queue_policy=not args.no_queue_policy)
    if args.text_endpoint:
        text_inputs(spec)  # not a text model: fail before any work
    rows, failed = [], []
    for variant in variants:
        command = (f"builder build {source} --variant {variant} --repository {shlex.quote(str(args.repository))} "
                   f"--artifacts {shlex.quote(str(args.artifacts))}"
                   + (f" --instances {args.instances}" if args.instances else "")
                   + (f" --threads {args.threads}" if args.threads else "")
                   + f" --max-queue-delay-us {args.max_queue_delay_us} --device {args.device}"
                   + (" --tensorrt" if args.tensorrt else "") + (" --text-endpoint" if args.text_endpoint else "")
                   + (f" --slo-p99-ms {args.slo_p99_ms:g}" if args.slo_p99_ms is not None else "")
                   + (" --no-queue-policy" if args.no_queue_policy else ""))
        try:
            entry = build_variant(spec, variant, args.repository, args.artifacts, serving, command,
                                  Gates(args.max_accuracy_drop, args.force, args.min_agreement),
                                  rebuild=args.rebuild)
            if entry is not None:  # None: a rank other than 0, which trained and wrote nothing
                rows.append(BuildEntry.of(variant, entry))
        except BuilderError as e:
            if len(variants) == 1:
                raise
            print(f"error: {variant}: {e}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
            failed.append((variant, command))
    if not processes.is_main():
        return 1 if failed else 0
    print_build_summary(spec.name, rows, failed)
    return 1 if failed else 0


HF_ONLY = ("data", "text_column", "label_column", "name")  # flags of a model given as it lies on disk


def resolve_build_spec(args):
    """(the spec, how a rebuild command names it: `--model x` or `--config file`). With --hf-model or --onnx-model,
    the spec is inferred from the model and its data, every row checked, and written beside the build record first
    (builder/pipeline/sources/hf.py, onnxfile.py)."""
    given = [f"--{flag.replace('_', '-')}" for flag in HF_ONLY if getattr(args, flag) is not None]
    model_file = args.hf_model or args.onnx_model or args.torch_program
    if not model_file:
        if given:  # never silently ignored
            raise ConfigError(f"{', '.join(given)} apply only with --hf-model, --onnx-model or --torch-program",
                              hint="a spec's own data function reads its data (docs/own-model.md)")
        spec = resolve_spec(args.model, args.config)
        return spec, f"--config {shlex.quote(str(args.config))}" if args.config else f"--model {args.model}"
    if sum(bool(x) for x in (args.model, args.config, args.hf_model, args.onnx_model, args.torch_program)) > 1:
        raise ConfigError("name one model: --model, --config, --hf-model, --onnx-model or --torch-program")
    kind = "--hf-model" if args.hf_model else "--onnx-model" if args.onnx_model else "--torch-program"
    if not args.data:
        raise ConfigError(f"{kind} needs its data: --data FILE ({'CSV or JSON lines' if args.hf_model else '.npz'})",
                          hint="or one file per split: --data train=a --data validation=b --data test=c")
    if not args.hf_model and (args.text_column or args.label_column):
        raise ConfigError("--text-column and --label-column apply to --hf-model; an .npz holds one array per "
                          "input and `labels`")
    command = " ".join(["builder build", kind, shlex.quote(str(model_file)),
                        *(f"--data {shlex.quote(v)}" for v in args.data),
                        *(f"--{flag.replace('_', '-')} {shlex.quote(getattr(args, flag))}"
                          for flag in HF_ONLY[1:] if getattr(args, flag) is not None)])
    if args.hf_model:
        spec = hf.infer_spec(args.hf_model, data_files(args.data), args.text_column or "text",
                             args.label_column or "label", args.name)
    elif args.onnx_model:
        spec = onnxfile.infer_spec(args.onnx_model, data_files(args.data),
                                   args.name or files.default_name(args.onnx_model))
    else:
        return program_spec(args, command)
    path = files.write_spec(spec, args.artifacts, command)
    print(f"wrote the inferred spec {path}")
    return resolve_spec(config=path), f"--config {shlex.quote(str(path))}"


def program_spec(args, command: str):
    """resolve_build_spec for --torch-program: the program exported to a scratch file and its data checked against
    it as an ONNX source's are, then the spec written, then the file moved beside it: a failure leaves nothing."""
    import tempfile

    data = data_files(args.data)
    name = args.name or files.default_name(args.torch_program)
    target = (args.artifacts / name / "program.onnx").resolve()
    with tempfile.TemporaryDirectory() as scratch:
        exported = torchprogram.export_program(args.torch_program,
                                               data if isinstance(data, str) else data["train"],
                                               pathlib.Path(scratch) / "program.onnx")
        spec = onnxfile.infer_spec(exported, data, name)  # every array, checked against the exported graph
        spec["factory_args"]["path"] = spec["data_args"]["model"] = str(target)
        if pathlib.Path(args.torch_program).suffix == ".pt2":  # a graph qat can train (builder/pipeline/variants/qat.py)
            spec["factory_args"]["program"] = str(pathlib.Path(args.torch_program).resolve())
        path = files.write_spec(spec, args.artifacts, command)
        atomic_write(target, exported.read_bytes())
    print(f"exported {args.torch_program} to {target}\nwrote the inferred spec {path}")
    return resolve_spec(config=path), f"--config {shlex.quote(str(path))}"


def data_files(values: list[str]):
    """--data values: one path, or {split: path} from `split=path` values."""
    if len(values) == 1 and values[0].partition("=")[0] not in files.SPLITS:
        return values[0]
    found = {}
    for value in values:
        split, sep, path = value.partition("=")
        if not sep or split not in files.SPLITS or split in found:
            raise ConfigError(f"--data {value}: with several files, each is SPLIT=FILE, one for each of "
                              f"{', '.join(files.SPLITS)}", hint="or one file, which the kit splits 70/10/20")
        found[split] = path
    return found


def print_build_summary(model: str, rows: list[BuildEntry], failed: list) -> None:
    if rows:
        header, body = build_table(model, rows)
        print()
        print_table(header, body, left=("model",), text_last=True)
        print("(drop: accuracy points vs fp32 on the first split, ±se its paired standard error; agree: top-1 agreement with fp32; b1 ms: p50 at "
              "batch 1, 1 thread; x: speedup vs fp32 measured in the same run, 1 thread; steps: optimizer steps "
              "trained / planned, ! when the time cap cut them short; %pk: achieved FLOP/s as % of this machine's measured "
              "GEMM peak of the variant's precision, batch 1 and 32, 1 thread"
              + (f"; CPU {rows[0].cpu_isa['summary']}" if rows[0].cpu_isa else "") + ")")
        if any(e.verdict_reused for e in rows):
            print("(verdict reused: refused before with the same recipe and inputs, so not trained again; its figures "
                  "are that build's. --rebuild trains and measures it again)")
        print_training(rows)
    for e in rows:  # int8's accuracy search, as INC prints its tuning: only when it had to revert nodes
        search = (e.raw.get("notes") or {}).get("int8_search")
        if search and len(search["trials"]) > 1:
            print(f"\n{e.triton_model}: int8 accuracy search on `{search['split']}` ({search['examples']} examples, "
                  f"budget {search['budget_points']} points vs fp32 {search['fp32_accuracy']:.4f}):")
            print("\n".join("  " + line for line in search["table"]))
    for variant, command in failed:
        print(f"FAILED {model_name(model, variant)}; rebuild just it with:\n  {command}")


def build_table(model: str, rows: list[BuildEntry]) -> tuple[list[str], list[list[str]]]:
    """The build summary's columns, by name, and one row per variant built."""
    splits = list(rows[0].accuracy)
    header = ["model", *(f"acc {s[:12]}" for s in splits), "drop", "±se", "agree", "params", "MB", "MMACs", "b1 ms",
              "x b1", "x b32", "%pk1", "%pk32", "steps", "s", "gate"]
    body = [[e.triton_model or model_name(model, e.variant), *(f"{e.accuracy[s]:.4f}" for s in splits),
             f"{e.accuracy_drop_points:.2f}", f"{e.accuracy_drop_se_points or 0:.2f}", f"{e.agreement_top1:.3f}",
             f"{e.params:,}", f"{e.onnx_bytes / 1e6:.1f}", f"{e.macs / 1e6:.1f}", f"{e.latency_p50_ms['b1_t1']:.2f}",
             f"{e.speedup_vs_fp32['b1_t1']:.2f}", f"{e.speedup_vs_fp32['b32_t1']:.2f}",
             peak_percent(e, "b1_t1"), peak_percent(e, "b32_t1"), training_steps(e), f"{e.build_seconds:.0f}",
             gate_text(e)] for e in rows]
    return header, body


def gate_text(e: BuildEntry) -> str:
    return (("; ".join(e.gates_failed) or "pass") + ("" if e.version_dir or not e.refused else " (not written)")
            + (f" (verdict of {e.built_at or 'an earlier build'} reused: same recipe and inputs)"
               if e.verdict_reused else ""))


def print_training(rows: list[BuildEntry]) -> None:
    """The fine-tuned teacher, how each variant trained, and any run the time cap cut short."""
    for e in rows:
        baseline = e.raw.get("baseline", {})
        if "frozen_accuracy" in baseline:
            split = baseline["validation_split"]
            frozen = " ".join(f"{name} {acc:.4f}" for name, acc in baseline["frozen_accuracy"].items())
            print(f"{e.triton_model}: fine-tuned end to end ({split} {baseline['fine_tuned_validation_accuracy']:.4f}); "
                  f"the frozen factory model it replaced: {frozen}")
    for e in rows:
        if e.training:  # how many processes trained, and how fast (the benchmark of docs/training.md)
            print(f"{e.triton_model}: " + "; ".join(
                f"{what}: {run.get('processes', 1)} process(es) x batch {run['batch_size']} = effective batch "
                f"{run.get('effective_batch_size', run['batch_size'])}, {run['steps']} steps in "
                f"{run['seconds']:.1f} s ({run.get('steps_per_second', '-')} steps/s)" for what, run in e.training.items()))
    for e in rows:
        for what in e.training_cut_by_time_cap:
            run = e.training[what]
            print(f"WARNING: {e.triton_model}: the {run['max_seconds']:.0f} s time cap CUT `{what}` SHORT at "
                  f"step {run['steps']} of {run['planned_steps']}: not the recipe's model, and not reproducible "
                  f"(raise the variant's train_seconds)")


def peak_percent(entry: BuildEntry, key: str) -> str:
    fraction = entry.peak_fraction(key)
    return "-" if fraction is None else f"{fraction * 100:.1f}"


def training_steps(entry: BuildEntry) -> str:
    """`trained/planned` optimizer steps over the entry's training runs, `!` when the time cap cut one short; `-`
    for an untrained variant."""
    runs = list(entry.training.values())
    if not runs:
        return "-"
    return (f"{sum(r['steps'] for r in runs)}/{sum(r['planned_steps'] for r in runs)}"
            + ("!" if entry.training_cut_by_time_cap else ""))


def cmd_serve(args) -> int:
    check_no_legacy_names(args.repository)
    models = list_models(args.repository)
    if args.repository.is_dir() and not models:
        print(f"warning: {args.repository} holds no model; build one with `builder build`", file=sys.stderr)
    server = EmbeddedServer(args.repository, args.http_port, args.grpc_port, args.metrics_port,
                            model_control=args.model_control, log_file=args.log_file, host=args.host,
                            admin_key_file=args.admin_key_file, max_body_mb=args.max_body_mb,
                            on_event=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True))
    # SIGTERM ends the wait like Ctrl-C does, so the server and its stubs are stopped in order
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    try:
        print(f"Triton {args.repository.resolve()}")
        print(f"  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}")
        print(f"  log     {server.log_path}")
        for line in server.exposure():
            print(f"  {line}")
        if args.model_control == "explicit":
            print("  a model whose backend process dies is reloaded (builder/serving/recovery.py)")
        failed = 0
        for m in server.models():
            line = f"  {m.name:32} {m.state}"
            if m.state != "READY":
                failed += 1
                line += f": {m.reason}"
            print(line)
        if failed:
            print(f"{failed} model(s) failed to load; the others are served", file=sys.stderr)
        for name, reason in server.cpu_fallbacks.items():
            print(f"WARNING: {name}: {reason}: SERVED ON CPU instead (config.pbtxt unchanged; the official image "
                  f"on a GPU machine serves it as built)", file=sys.stderr)
        print("serving; Ctrl-C to stop", flush=True)
        code = server.process.wait()
        print(f"error: tritonserver exited with code {code}: {server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        server.stop()
        print("stopped", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_demo(args) -> int:
    chosen = any(getattr(args, flag) for flag in ("model", "config", "hf_model", "onnx_model", "torch_program"))
    specs = [resolve_build_spec(args)[0]] if chosen else None  # your model (its spec written first), or the demo's
    result = run_demo(args.repository, args.artifacts, args.reports, args.examples, args.rebuild, args.quick,
                      args.slo_p99_ms, args.max_accuracy_drop, specs=specs)
    rows = result["accuracy"]
    print(f"\n{'model':16} {'split':16} {'examples':>8} {'protocol':>8} {'served':>8} {'in-process':>10} {'same':>5}")
    for r in rows:
        same = "yes" if r["served"] == r["in_process"] else "NO"
        print(f"{r['model']:16} {r['split']:16} {r['examples']:8} {r['protocol']:>8} {r['served']:8.4f} "
              f"{r['in_process']:10.4f} {same:>5}")
    print_summary(result["report"])
    for command in result["failed"]:
        print(f"FAILED to build; rebuild just it with:\n  {command}")
    html, md = result["paths"]
    print(f"\ndemo finished in {result['seconds']} s\nreport: {html}\n        {md}")
    return 0 if all(r["served"] == r["in_process"] for r in rows) and not result["failed"] else 1
