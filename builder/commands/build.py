"""`builder build`: build variants of a model into the Triton repository, each measured and gated, and print
what was built."""

from __future__ import annotations

import pathlib
import shlex
import sys

from ..core.console import print_table
from ..core.errors import BuilderError, ConfigError
from ..core.names import model_name
from ..core.record import BuildEntry
from ..pipeline import processes
from ..pipeline.build import Gates, build_variant
from ..pipeline.processes import DECIDED, MAIN
from ..pipeline.train import TrainingOverrides, train_config
from ..pipeline.variants import steps
from ..serving.text_endpoint import text_inputs
from ..serving.tritonconfig import ServingConfig
from .options import DEFAULT_ARTIFACTS, DEFAULT_REPOSITORY, model_arguments, resolve_build_spec

HELP = 'build variants into the model repository'


def add_arguments(build) -> None:
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


def run(args) -> int:
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
    say = processes.main_only(print)
    if "fp32" not in variants and not processes.stage(
            DECIDED, lambda: (args.artifacts / spec.name / "fp32" / "outputs.npz").is_file()):
        say(f"{spec.name}: building the fp32 baseline first (every variant is measured against it)")
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
    processes.stage(MAIN, lambda: print_build_summary(spec.name, rows, failed))  # rows: rank 0's alone
    return 1 if failed else 0


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
