"""Build one variant of a model: load -> torch steps -> export -> verify -> ONNX steps -> measure -> gate -> write.

The build record (`<artifacts>/<model>/record.json`, written through builder/core/artifacts.py) lives outside the Triton repository so it never disturbs
loading; it holds, per variant, what was measured and the command and resolved config that reproduce it. Every
variant is compared with fp32 measured in the same run (latency) and on the same examples (accuracy, agreement).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..core.artifacts import MARGINAL_SPEEDUP, load_splits, read_record, record_path, write_entry
from ..core.data import trim_padding
from ..core.errors import ConfigError, ExportError, VariantError
from ..core.evaluate import onnx_predictor, onnx_session, outputs_on, paired_drop_se, score
from ..core.files import atomic_write
from ..core.machine import cpu_isa
from ..core.names import model_name
from ..core.spec import ModelSpec, length_buckets
from ..serving import repository as repo
from ..serving.limits import derive_limits
from ..serving.text_endpoint import max_tokens, write_text_endpoint
from ..serving.tritonconfig import ServingConfig, build_config, to_text
from . import processes
from .processes import DECIDED, MAIN, MAIN_FIRST
from .measure import agreement, count_macs, count_onnx_macs, fixed_batch, gzip_bytes, latency_table
from .profile import MACS_LENGTHS, macs_by_length, profile_table, sequence_axes
from .roofline import achieved, machine_peak
from .sources.onnxfile import OnnxFile
from .teacher import load_model
from .torch2onnx import check_limits, example_batch, export, verify
from .train import seed_everything
from .variants import facts, steps

VERIFY_EXAMPLES = 8
MAX_ACCURACY_DROP = 1.0  # points
BUILD_SEED = 0  # every build starts from the same random state: the same command gives the same model


@dataclass
class BuildContext:
    """What a variant step may use: the spec, the model's work folder (caches), its cached data splits, the
    variant's own output folder, the fp32 model (a teacher) and a dict of notes that goes into the record."""

    spec: ModelSpec
    workdir: pathlib.Path
    splits: dict
    out: pathlib.Path
    teacher: object = None
    progress: Callable[[str], None] = print
    notes: dict = field(default_factory=dict)
    max_accuracy_drop: float | None = None  # the build's accuracy gate, points: steps that search (int8) aim at it
    teacher_key: str | None = None  # the fine-tuned teacher's cache key (None: the factory's model is fp32)
    handoff: dict = field(default_factory=dict)  # what a step's apply leaves for its finish (rank 0; variants/)


@dataclass(frozen=True)
class Gates:
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points, on every evaluation split
    force: bool = False  # write to the repository even when a gate fails
    min_agreement: float | None = None  # top-1 agreement with fp32 (0..1) on the first evaluation split; None: no gate


def build_variant(spec: ModelSpec, variant: str, repository: pathlib.Path, artifacts: pathlib.Path,
                  serving: ServingConfig = ServingConfig(), command: str = "", gates: Gates = Gates(),
                  progress: Callable[[str], None] = print, eval_limit: int | None = None,
                  rebuild: bool = False) -> dict | None:
    """Build `variant` of `spec`; write it to `repository` unless it fails a gate (and not forced).
    `eval_limit` measures accuracy on that many examples spread over each split (quick runs, tests; the record
    says so); default: every example. A variant refused before with the same `recipe_key` is not trained again:
    its recorded entry is returned with `verdict_reused` set, unless `rebuild` or `gates.force`.

    Returns its entry of the build record (also written to disk); on a rank other than 0 of several processes,
    None once its share of the training is done (it writes nothing). Raises BuilderError subclasses for errors."""
    plan = plan_steps(spec, variant)
    refuse_training(spec, variant, plan)
    request = Request(spec, variant, plan, repository, artifacts, serving.for_spec(spec), gates, command, eval_limit)
    workdir, out, started = artifacts / spec.name, artifacts / spec.name / variant, time.perf_counter()
    say = processes.main_only(progress)  # the other ranks' one line per training run comes from run_training

    def step(message: str) -> None:
        say(f"[{model_name(spec.name, variant)} {time.perf_counter() - started:6.1f}s] {message}")

    # The stages, each under its rank rule (builder/pipeline/processes.py); the work inside them is rank-free.
    key, reused = processes.stage(DECIDED, lambda: recipe_and_verdict(request, rebuild))
    if reused is not None:
        step(f"refused before with the same recipe and inputs ({reused.get('built_at', 'an earlier build')}, "
             f"{record_path(artifacts, spec.name)}): " + "; ".join(reused["gates_failed"])
             + ". Verdict reused, not retrained; --rebuild trains and measures it again")
        return processes.stage(MAIN, lambda: reused | {"verdict_reused": True})
    processes.stage(MAIN, lambda: out.mkdir(parents=True, exist_ok=True))
    step("loading data splits")
    splits = processes.stage(MAIN_FIRST, lambda: load_splits(spec, workdir))  # rank 0 fills the cache
    model, teacher, context = prepare(request, splits, out, step)  # teacher.py: the teacher's own stages
    torch_part, fingerprint = export_fingerprint(plan, context)
    exported = processes.stage(DECIDED, lambda: reuse_export(workdir / torch_part, fingerprint)
                               if torch_part != variant else None)
    if exported is None:
        model = transform_torch(model, plan, context)  # every rank trains; each step's finish on rank 0
    else:
        step(f"reusing the {torch_part} export built with the same settings")
    return processes.stage(MAIN, lambda: measure_and_publish(request, model, exported, fingerprint, teacher, key,
                                                             context, started))


@dataclass(frozen=True)
class Request:
    """One variant to build, as the command asked for it: what every stage of its build reads."""

    spec: ModelSpec
    variant: str
    plan: list  # (step, its Config), in order
    repository: pathlib.Path
    artifacts: pathlib.Path
    serving: ServingConfig  # for this spec (ServingConfig.for_spec)
    gates: Gates
    command: str = ""
    eval_limit: int | None = None


def measure_and_publish(request: Request, model, exported: tuple | None, fingerprint: str, teacher: dict | None,
                        key: str, context: BuildContext, started: float) -> dict:
    """Rank 0's stage, after training: export (or reuse the export), the ONNX steps, accuracy, latency, the gates,
    the repository, the build record. Returns the record's entry."""
    spec, variant, plan, serving, step = request.spec, request.variant, request.plan, request.serving, context.progress
    onnx_path, torch_facts = exported_files(model, exported, fingerprint, context)
    onnx_path = transform_onnx(onnx_path, plan, context)
    step("measuring accuracy and agreement with fp32")
    scores = score_variant(onnx_path, variant, context, request.eval_limit)
    step("measuring latency (in-process ONNX Runtime, this variant and fp32 in the same run)")
    latency = measure_latency(onnx_path, variant, context)
    failed_gates = check_gates(variant, plan, scores, latency, serving, request.gates, context)
    entry = {"triton_model": model_name(spec.name, variant), **score_facts(scores),
             # what fp32 is: the factory's model, or it fine-tuned (the frozen one's accuracy beside it)
             "baseline": baseline_facts(teacher, variant), **torch_facts, **size_and_speed(onnx_path, latency),
             "gates_failed": failed_gates, "recipe_key": key, "notes": context.notes,
             **provenance(spec, plan, serving, request.command)}
    if spec.sequence_mask:  # what the client and load tests pad text requests to (spec.length_buckets)
        entry["length_buckets"] = list(model_length_buckets(spec, context.workdir, context.splits[spec.evaluate[0]]))
    step("deriving input limits (token ids, sequence lengths) from the ONNX file")
    entry["input_limits"] = derive_limits(spec, onnx_path)
    peak = machine_peak(request.artifacts, step)  # measured once per machine, cached beside the records
    entry["cpu_isa"] = peak["isa"]
    entry["roofline"] = achieved(entry["macs"], latency["latency"], peak, facts(variant).compute_precision)
    entry |= profile_variant(model, onnx_path, variant, context)
    entry |= publish(onnx_path, variant, request.repository, request.artifacts, serving, failed_gates,
                     request.gates, context, limits=entry["input_limits"],
                     length_buckets_of=entry.get("length_buckets"))
    entry |= training_facts(context.notes.get("training", {}), step)
    entry["build_seconds"] = round(time.perf_counter() - started, 1)
    entry["built_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_entry(request.artifacts, spec.name, variant, entry)
    return entry


def recipe_and_verdict(request: Request, rebuild: bool) -> tuple[str, dict | None]:
    """(recipe_key, the entry of an earlier refusal with that key, or None), from rank 0's disk. Raises
    VariantError when a variant other than fp32 has no fp32 to be measured against."""
    spec, variant, artifacts = request.spec, request.variant, request.artifacts
    workdir = artifacts / spec.name
    if variant != "fp32" and not (workdir / "fp32" / "outputs.npz").is_file():
        raise_missing_baseline(spec)
    key = recipe_key(spec, variant, request.plan, request.gates, request.serving, request.eval_limit, workdir)
    reused = None if rebuild or request.gates.force else refused_before(artifacts, spec, variant, key)
    return key, reused


def prepare(request: Request, splits: dict, out: pathlib.Path, step: Callable[[str], None]) -> tuple:
    """(model, teacher facts or None, BuildContext): the model every step starts from (the fine-tuned teacher when
    the spec asks for one), seeded."""
    spec, variant, workdir = request.spec, request.variant, request.artifacts / request.spec.name
    seed_everything(BUILD_SEED)  # students' fresh layers, sampling: the same whatever ran before in this process
    step("loading model")
    model, teacher = load_model(spec, workdir, splits, step)
    if isinstance(model, OnnxFile):
        refuse_torch_steps(spec, variant, request.plan, model)
    context = BuildContext(spec, workdir, splits, out, teacher=model, progress=step,
                           max_accuracy_drop=request.gates.max_accuracy_drop,
                           teacher_key=teacher and teacher["key"])
    if teacher is not None and variant == "fp32":
        context.notes["training"] = {"teacher fine-tune": teacher["training"]}
    return model, teacher, context


def score_facts(scores: dict) -> dict:
    """The record's accuracy keys, from score_variant."""
    return {"accuracy": scores["accuracy"], "accuracy_drop_points": scores["drop"],
            "accuracy_drop_se_points": scores["drop_se"],
            "accuracy_drop_by_split": scores["drop_by_split"],  # {split: [drop, se]}, the first split's as above
            "eval_examples": scores["eval_examples"], "agreement_with_fp32": scores["agreement"]}


def size_and_speed(onnx_path: pathlib.Path, latency: dict) -> dict:
    """The record's file sizes and in-process latency keys, from measure_latency."""
    return {"onnx_bytes": onnx_path.stat().st_size, "onnx_gzip_bytes": gzip_bytes(onnx_path),
            "latency_p50_ms": latency["latency"], "fp32_latency_p50_ms": latency["fp32_latency"],
            "speedup_vs_fp32": latency["speedup"]}


def provenance(spec: ModelSpec, plan: list, serving: ServingConfig, command: str) -> dict:
    """What made this entry: the command, the spec, the steps' resolved configs, the serving config, the libraries."""
    return {"command": command, "spec": spec_dict(spec),
            "variant_configs": {s.name: dataclasses.asdict(c) for s, c in plan},
            "serving": dataclasses.asdict(serving) | {"intra_op_threads": serving.threads()},
            "versions": library_versions()}


def training_facts(training: dict, step: Callable[[str], None]) -> dict:
    """The record's `training` (per trained run) and the runs the time cap cut short, each warned about."""
    cut = sorted(what for what, run in training.items() if run["stopped_by_time_cap"])
    for what in cut:
        run = training[what]
        step(f"WARNING: the {run['max_seconds']:.0f} s time cap cut `{what}` short at step {run['steps']} of "
             f"{run['planned_steps']}: this model is not its recipe's, and a rebuild may differ")
    return {"training": training, "training_cut_by_time_cap": cut}


def recipe_key(spec: ModelSpec, variant: str, plan: list, gates: Gates, serving: ServingConfig,
               eval_limit: int | None, workdir: pathlib.Path) -> str:
    """A hash of everything a variant's verdict depends on, as the teacher cache keys its recipe
    (builder/pipeline/teacher.py): the spec (its training section and every variant's options), this variant's resolved
    step configs (their defaults included), the gates, how many examples are scored, the device the speed gate
    judges for, the fp32 model every variant is measured against (its file's content: a new teacher is a new fp32),
    the CPU (the speed gate) and the library versions. The kit's own code is not in it: after changing a recipe in
    code, rebuild with --rebuild."""
    baseline = workdir / "fp32" / "model.onnx"
    fp32 = file_digest(baseline, *stat_key(baseline)) if variant != "fp32" and baseline.is_file() else None
    isa = cpu_isa()
    recipe = {"spec": spec_dict(spec), "variant": variant,
              "steps": [[s.name, dataclasses.asdict(c)] for s, c in plan],
              "gates": {"max_accuracy_drop": gates.max_accuracy_drop, "min_agreement": gates.min_agreement},
              "eval_limit": eval_limit, "device": serving.device,
              "fp32": fp32 or hashlib.blake2b(digest_size=16).hexdigest(),
              "cpu": [isa["model"], isa["summary"]], "versions": library_versions()}
    return hashlib.blake2b(json.dumps(recipe, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def stat_key(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def file_digest(path: pathlib.Path, mtime_ns: int, size: int) -> str:
    """A hash of the file's content, once per version of it in this process (a demo keys every variant of a model
    by its 90 MB fp32 file): the modification time and size name the version."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refused_before(artifacts: pathlib.Path, spec: ModelSpec, variant: str, key: str) -> dict | None:
    """The build-record entry of `variant` if the build refused it (a gate failed, not written) with the same
    recipe key; else None (never built, built before keys were recorded, passed, forced, or anything changed)."""
    entry = read_record(artifacts, spec.name)["variants"].get(variant)
    if entry and entry.get("recipe_key") == key and entry.get("gates_failed") and not entry.get("version_dir"):
        return entry
    return None


def plan_steps(spec: ModelSpec, variant: str) -> list:
    """(step, its Config) for each step of `variant`, in order. Raises VariantError before any work starts."""
    plan = steps(variant)
    return [(s, s.config(spec.variants)) for s in plan]


def torch_steps(plan: list) -> list:
    """The plan's torch-level steps, fp32 (the model as it is) left out."""
    return [(s, c) for s, c in plan if s.stage == "torch" and s.name != "fp32"]


def export_fingerprint(plan: list, context: BuildContext) -> tuple[str, str]:
    """(the variant its torch steps alone make, e.g. `distilled` of distilled+int8; the settings they ran with): an
    earlier export with the same fingerprint is the same torch model (no second training)."""
    steps_run = torch_steps(plan)
    fingerprint = json.dumps({"spec": spec_dict(context.spec), "teacher": context.teacher_key,
                              "steps": [[s.name, dataclasses.asdict(c)] for s, c in steps_run]},
                             sort_keys=True, default=str)
    return "+".join(s.name for s, _ in steps_run) or "fp32", fingerprint


def transform_torch(model, plan: list, context: BuildContext):
    """Run the torch-level steps: each step's `apply` on every rank (each trains on its share), then its `finish`
    (what it measures or writes once trained) on rank 0 only. Returns the torch model (or an OnnxFile)."""
    for s, config in torch_steps(plan):
        context.progress(f"{s.name}: transforming the PyTorch model")
        model = s.module.apply(model, context, config)
        if s.finish is not None:
            model = processes.stage(MAIN, functools.partial(s.finish, model, context, config), otherwise=model)
    return model


def exported_files(model, exported: tuple | None, fingerprint: str, context: BuildContext) -> tuple[pathlib.Path, dict]:
    """(the ONNX file, facts only the torch model knows): the reusable export's (`exported`), or `model` exported
    now and remembered with its fingerprint (export.json)."""
    if exported is not None:
        onnx_path, torch_facts = exported
        context.notes.update(torch_facts.pop("notes"))
        return onnx_path, torch_facts
    spec, splits, out, step = context.spec, context.splits, context.out, context.progress
    if isinstance(model, OnnxFile):
        onnx_path, torch_facts = copy_checked(model, spec, splits, out, step)
    else:
        onnx_path, torch_facts = export_checked(model, spec, splits, out, step)
    atomic_write(out / "export.json", json.dumps({"fingerprint": fingerprint, **torch_facts,
                                                  "notes": dict(context.notes)}, default=str))
    return onnx_path, torch_facts


def transform_onnx(onnx_path: pathlib.Path, plan: list, context: BuildContext) -> pathlib.Path:
    """Run the ONNX-level steps on the exported file; each result is checked against ONNX Runtime 1.19's limits."""
    for s, config in plan:
        if s.stage == "onnx":
            context.progress(f"{s.name}: transforming the ONNX model")
            onnx_path = s.module.apply(onnx_path, context, config)
            check_limits(onnx_path)
    return onnx_path


def score_variant(onnx_path: pathlib.Path, variant: str, context: BuildContext, eval_limit: int | None) -> dict:
    """Accuracy on each evaluation split, and the drop (± its paired se) on each and the agreement on the first,
    against fp32's saved outputs on exactly the same examples. fp32 itself is scored on every example and saves its
    outputs on every split: every variant's reference."""
    spec, splits, out = context.spec, context.splits, context.out
    if variant == "fp32":
        eval_limit = None  # the baseline's outputs on every example are the reference of every variant
    predict = onnx_predictor(onnx_session(onnx_path))
    measured = {name: splits[name].spread(eval_limit) for name in spec.evaluate}
    outputs = {name: outputs_on(predict, spec, split) for name, split in measured.items()}
    accuracy = {name: score(spec.metric, outputs[name], split.labels) for name, split in measured.items()}
    if variant == "fp32":
        for name in spec.evaluate:
            atomic_write(out / fp32_outputs_file(spec, name), lambda f, name=name: np.savez(f, **outputs[name]))
    drops = {}
    for name in spec.evaluate:
        index = splits[name].spread_index(eval_limit)
        reference = {k: v[index] for k, v in fp32_outputs(context, name).items()}
        labels = splits[name].labels[index]
        # fp32's accuracy on exactly the examples this variant was measured on
        drops[name] = [round((score(spec.metric, reference, labels) - accuracy[name]) * 100, 2),
                       paired_drop_se(spec.metric, reference, outputs[name], labels)]
        if name == spec.evaluate[0]:
            agreed = agreement(spec, outputs[name], reference, labels)
    first = spec.evaluate[0]
    return {"accuracy": accuracy, "drop": drops[first][0], "drop_se": drops[first][1], "drop_by_split": drops,
            "eval_examples": {name: len(split) for name, split in measured.items()}, "agreement": agreed}


def fp32_outputs_file(spec: ModelSpec, split: str) -> str:
    """fp32's saved outputs on `split`: `outputs.npz` for the first evaluation split (the name every build since
    the first has used), `outputs_<split>.npz` for the others."""
    return "outputs.npz" if split == spec.evaluate[0] else f"outputs_{split}.npz"


def fp32_outputs(context: BuildContext, split: str) -> dict:
    """fp32's outputs on every example of `split`. An fp32 built before every split was saved has only the first:
    the others are computed once from its model.onnx and saved beside it."""
    path = context.workdir / "fp32" / fp32_outputs_file(context.spec, split)
    if not path.is_file():
        context.progress(f"computing fp32's outputs on `{split}` once (an fp32 built by an older kit saved only "
                         "the first evaluation split's)")
        predict = onnx_predictor(onnx_session(context.workdir / "fp32" / "model.onnx"))
        computed = outputs_on(predict, context.spec, context.splits[split])
        atomic_write(path, lambda f: np.savez(f, **computed))
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def measure_latency(onnx_path: pathlib.Path, variant: str, context: BuildContext) -> dict:
    """{"latency", "fp32_latency", "speedup"}: p50 tables of this variant and fp32 in this process. A marginal
    speedup is measured again, fp32 and the variant side by side."""
    spec, workdir, split = context.spec, context.workdir, context.splits[context.spec.evaluate[0]]
    latency = latency_table(onnx_path, spec, split)
    fp32_latency = fp32_latency_table(workdir, spec, split, latency if variant == "fp32" else None)
    speedup = {k: round(fp32_latency[k] / latency[k], 3) for k in latency}
    if variant != "fp32" and abs(mean_speedup(speedup) - 1.0) <= MARGINAL_SPEEDUP:
        # a verdict within the drift of this shared machine over a long build: fp32 and the variant side by side
        context.progress(f"speedup {mean_speedup(speedup):.2f}x is marginal: measuring fp32 and this variant again, "
                         "side by side")
        fp32_latency = latency_table(workdir / "fp32" / "model.onnx", spec, split)
        latency = latency_table(onnx_path, spec, split)
        speedup = {k: round(fp32_latency[k] / latency[k], 3) for k in latency}
        context.notes["latency_remeasured_side_by_side"] = True
    return {"latency": latency, "fp32_latency": fp32_latency, "speedup": speedup}


def check_gates(variant: str, plan: list, scores: dict, latency: dict, serving: ServingConfig, gates: Gates,
                context: BuildContext) -> list[str]:
    """The gates this variant fails: accuracy drop over the budget; slower than fp32 (judged on CPU only)."""
    failed_gates = []
    if scores["drop"] > gates.max_accuracy_drop:
        # ± its paired standard error: the report and the summaries quote this reason as it is
        failed_gates.append(f"accuracy drop {scores['drop']:.2f} ± {scores['drop_se']:.2f} points > "
                            f"{gates.max_accuracy_drop}")
    for split, (drop, se) in list(scores["drop_by_split"].items())[1:]:  # the budget holds on every split
        if drop > gates.max_accuracy_drop:
            failed_gates.append(f"accuracy drop on {split} {drop:.2f} ± {se:.2f} points > {gates.max_accuracy_drop}")
    agreed = scores["agreement"]
    if gates.min_agreement is not None and agreed["top1"] < gates.min_agreement:
        failed_gates.append(f"top-1 agreement with fp32 {agreed['top1']:.3f} < {gates.min_agreement}")
    speedup = mean_speedup(latency["speedup"])
    size_only = facts(variant).size_only  # e.g. clustered: fp32's kernels by design
    if size_only and variant != "fp32" and 1.0 - MARGINAL_SPEEDUP <= speedup < 1.0:
        context.notes["speed_gate"] = ("within the measurement margin of fp32: this variant buys size, not speed, "
                                       "and runs fp32's kernels")
    elif variant != "fp32" and speedup < 1.0:
        if serving.device == "cpu":
            failed_gates.append(f"slower than fp32 ({speedup:.2f}x, geometric mean over batch sizes and threads)")
        else:  # the latency was measured here, on CPU: it says nothing about the GPU the model is built for
            context.notes["speed_gate"] = "not applied: slower than fp32 on CPU, but built for --device gpu"
    return failed_gates


def profile_variant(model, onnx_path: pathlib.Path, variant: str, context: BuildContext) -> dict:
    """The record's `operator_profile` and, for fp32 of a sequence model, `macs_by_length`."""
    spec, split, step = context.spec, context.splits[context.spec.evaluate[0]], context.progress
    step("profiling operators (ONNX Runtime profiler, batch 1 and 32)")
    facts = {"operator_profile": profile_table(onnx_path, spec, split)}
    # once per model, on the untransformed torch model in hand (an ONNX source has none)
    if variant == "fp32" and sequence_axes(spec) and not isinstance(model, OnnxFile):
        step(f"counting MACs by layer type at sequence lengths {', '.join(map(str, MACS_LENGTHS))}")
        facts["macs_by_length"] = macs_by_length(model, spec, split)
    return facts


def publish(onnx_path: pathlib.Path, variant: str, repository: pathlib.Path, artifacts: pathlib.Path,
            serving: ServingConfig, failed_gates: list[str], gates: Gates, context: BuildContext,
            limits: dict, length_buckets_of: list | None = None) -> dict:
    """Write the model (and its raw-text ensemble, if asked) to the repository unless a gate failed and not
    forced. Returns the record's `version_dir` (None: not written) and, if asked, `text_endpoint`."""
    spec, step = context.spec, context.progress
    facts = {}
    if failed_gates and not gates.force:
        step("NOT written to the repository: " + "; ".join(failed_gates) + " (--force writes it anyway)")
        facts["version_dir"] = None
        name = model_name(spec.name, variant)
        if name in repo.list_models(repository):  # left as it is: a refused rebuild deletes nothing
            step(f"{repository / name} still holds an earlier build of this variant, which the server keeps "
                 f"serving: remove that folder to stop serving it")
    else:
        name = model_name(spec.name, variant)
        config = build_config(name, spec, serving, onnx_path, limits=limits,
                              length_buckets=len(length_buckets_of or []))
        version_dir = repo.write_model(repository, name, to_text(config), onnx_path)
        facts["version_dir"] = str(version_dir)
        step(f"wrote {version_dir}")
        legacy = repo.remove_legacy(repository, spec.name, variant)
        if legacy is not None:
            step(f"removed {legacy}: the same variant under its old name (names no longer hold `+`)")
        if serving.device == "gpu":
            step("KIND_GPU instances" + (", TensorRT FP16" if serving.tensorrt else "") + ": for Triton on a GPU "
                 "machine (docker/); the embedded server has no GPU support and serves it on CPU, with a warning")
    if serving.text_endpoint:
        facts["text_endpoint"] = None
        if facts["version_dir"] is None:
            step("raw-text endpoint NOT written: its encoder was not written")
        else:
            facts["text_endpoint"] = write_text_endpoint(spec, variant, repository, artifacts, serving)
            step(f"wrote the raw-text ensemble {facts['text_endpoint']['model']} (texts truncated at "
                 f"{facts['text_endpoint']['max_tokens']} tokens)")
    return facts


def baseline_facts(teacher: dict | None, variant: str) -> dict:
    """The record's account of fp32: for every variant the teacher it was measured against; for fp32 itself the
    fine-tune's facts and the frozen factory model's accuracy."""
    if teacher is None:
        return {"fine_tuned": False}
    facts = {"fine_tuned": True, "teacher_key": teacher["key"]}
    if variant == "fp32":
        facts.update(frozen_accuracy=teacher["frozen_accuracy"],
                     fine_tuned_validation_accuracy=teacher["fine_tuned_validation_accuracy"],
                     validation_split=teacher["validation_split"], recipe=teacher["recipe"])
    return facts


def mean_speedup(speedup: dict) -> float:
    """Geometric mean of the speedups over batch sizes and thread counts: what the speed gate judges."""
    return float(np.exp(np.mean(np.log(list(speedup.values())))))


_FP32_LATENCY: dict = {}  # (fp32 file, its mtime and size) -> latency table, measured once per process


def fp32_latency_table(workdir: pathlib.Path, spec: ModelSpec, split, measured: dict | None = None) -> dict:
    """fp32's latency table, measured once per build run (one process) and reused by every variant of that run:
    `--variant all` compares every variant with the same fp32 figures, and does not spend ~8 s re-measuring MiniLM
    for each. `measured`: the table just measured for fp32 itself."""

    path = workdir / "fp32" / "model.onnx"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if measured is not None:
        _FP32_LATENCY[key] = measured
    if key not in _FP32_LATENCY:
        _FP32_LATENCY[key] = latency_table(path, spec, split)
    return _FP32_LATENCY[key]


def export_checked(model, spec: ModelSpec, splits: dict, out: pathlib.Path, step) -> tuple[pathlib.Path, dict]:
    """Export, check against PyTorch, count what only the torch model knows (parameters, MACs)."""
    onnx_path = out / "model.onnx"
    step("exporting to ONNX")
    export(model, spec, example_batch(spec), onnx_path)
    step("checking ONNX Runtime against PyTorch")
    verify_batch = splits[spec.validation_split].spread(VERIFY_EXAMPLES).inputs
    if spec.sequence_mask:
        verify_batch = trim_padding(verify_batch, spec.sequence_mask)
    return onnx_path, {"export_max_abs_diff": verify(model, spec, onnx_path, verify_batch),
                       "params": int(sum(p.numel() for p in model.parameters())),
                       "macs": count_macs(model, fixed_batch(spec, splits[spec.evaluate[0]], 1))}


def copy_checked(source: OnnxFile, spec: ModelSpec, splits: dict, out: pathlib.Path, step) -> tuple[pathlib.Path, dict]:
    """fp32 of an ONNX source: the file as given, copied, checked to run on real examples and to answer the spec's
    outputs; its parameters and MACs counted from the graph. Raises ExportError if ONNX Runtime cannot run it."""
    import shutil

    import onnx

    onnx_path = out / "model.onnx"
    step(f"copying {source.path} as given")
    shutil.copyfile(source.path, onnx_path)
    check_limits(onnx_path)
    step("checking that ONNX Runtime runs it on real examples")
    batch = splits[spec.validation_split].spread(VERIFY_EXAMPLES).inputs
    try:
        outputs = onnx_predictor(onnx_session(onnx_path))(batch)
    except Exception as e:  # ONNX Runtime's own exception types, for a graph it cannot load or run
        raise ExportError(f"{source.path}: ONNX Runtime cannot run it on the data's examples: {e}") from e
    missing = [t.name for t in spec.outputs if t.name not in outputs]
    if missing:
        raise ExportError(f"{source.path}: no output(s) {missing}")
    model = onnx.load(str(onnx_path))
    return onnx_path, {"export_max_abs_diff": 0.0,  # nothing exported: the file is the model
                       # weights: the float initializers (int64 ones are shapes and indices the exporter folded)
                       "params": int(sum(np.prod(t.dims) for t in model.graph.initializer
                                         if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))),
                       "macs": count_onnx_macs(model, fixed_batch(spec, splits[spec.evaluate[0]], 1))}


def refuse_torch_steps(spec: ModelSpec, variant: str, plan: list, source: OnnxFile) -> None:
    """An ONNX source has no PyTorch model: refuse, in one line, a variant that trains or changes one. One built
    from a torch.export program (`--torch-program FILE.pt2`) keeps the program, which `qat` trains."""
    torch_steps = [s.name for s, _ in plan if s.stage == "torch" and s.name != "fp32"]
    if torch_steps == ["qat"]:
        if source.program is None:
            raise VariantError(f"{spec.name}: `{variant}` trains the model, and this ONNX source has no torch.export "
                               "program to train (a TorchScript program's graph cannot be rewritten)",
                               hint="build it from --torch-program FILE.pt2 (torch.export.save), or build the "
                                    "post-training variants: fp16, int8, int8-dynamic, int8-static")
        return
    if torch_steps:
        raise VariantError(f"{spec.name}: `{variant}` trains or changes the PyTorch model ({', '.join(torch_steps)}), "
                           f"and an ONNX file has none", hint="build the post-training variants: fp16, int8, "
                                                              "int8-dynamic, int8-static")


def refuse_training(spec: ModelSpec, variant: str, plan: list) -> None:
    """The kit's training (distillation, pruning's and QAT's recovery, ...) teaches a classifier: one label per
    example, [batch, classes] logits. Refuse, in one line, a variant that trains any other model (a token
    classifier, an embedding model)."""
    output = next(t for t in spec.outputs if t.name == spec.metric.output)
    if spec.metric.name == "accuracy" and len(output.shape) == 2:
        return
    training = [s.name for s, config in plan if s.name != "fp32" and (
        s.module.TRAINS is True or (s.module.TRAINS == "option" and getattr(config, "fine_tune", False)))]
    if training:
        raise VariantError(f"{spec.name}: `{variant}` trains ({', '.join(training)}), and the kit trains classifiers "
                           f"only: one label per example, [batch, classes] logits; `{output.name}` is "
                           f"{list(output.shape)} scored by {spec.metric.name}",
                           hint="build the post-training variants: fp16, int8, int8-dynamic, int8-static")


def reuse_export(folder: pathlib.Path, fingerprint: str) -> tuple[pathlib.Path, dict] | None:
    """The ONNX file and torch-level facts of an earlier build of the same torch steps with the same settings."""
    meta = folder / "export.json"
    if not (meta.is_file() and (folder / "model.onnx").is_file()):
        return None
    facts = json.loads(meta.read_text())
    if facts.pop("fingerprint") != fingerprint:
        return None
    return folder / "model.onnx", facts


def model_length_buckets(spec: ModelSpec, workdir: pathlib.Path, split) -> tuple[int, ...]:
    """spec's length buckets up to the model's maximum: its tokenizer.json's truncation length, or for a text
    model without one, the longest text of `split`."""
    tokenizer_file = workdir / "tokenizer.json"
    try:
        return length_buckets(spec, max_tokens(tokenizer_file))
    except (ConfigError, OSError):  # no tokenizer.json, or one without a truncation length
        pass
    return length_buckets(spec, int(split.inputs[spec.sequence_mask].sum(axis=1).max()))


def raise_missing_baseline(spec: ModelSpec):
    raise VariantError(f"{spec.name}: the fp32 baseline is not built yet; every variant is measured against it",
                       hint=f"build it first: builder build --model {spec.name} --variant fp32 (or --variant all)")


def spec_dict(spec: ModelSpec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

