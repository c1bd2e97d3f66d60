"""Build one variant of a model: load -> torch steps -> export -> verify -> ONNX steps -> measure -> gate -> write.

The build record (`<artifacts>/<model>/record.json`) lives outside the Triton repository so it never disturbs
loading; it holds, per variant, what was measured and the command and resolved config that reproduce it. Every
variant is compared with fp32 measured in the same run (latency) and on the same examples (accuracy, agreement).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import repository as repo
from .data import load_splits, trim_padding
from .evaluate import onnx_predictor, onnx_session, run_split, score
from .spec import ModelSpec, length_buckets, resolve_callable
from .tritonconfig import ServingConfig, build_config, to_text
from .variants import steps

VERIFY_EXAMPLES = 8
MARGINAL_SPEEDUP = 0.1  # |geometric mean speedup - 1| at most this: re-measured beside fp32 before the speed gate
MAX_ACCURACY_DROP = 1.0  # points


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


@dataclass(frozen=True)
class Gates:
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points on the first evaluation split
    force: bool = False  # write to the repository even when a gate fails


def model_name(spec: ModelSpec, variant: str) -> str:
    return f"{spec.name}_{variant}"


def build_variant(spec: ModelSpec, variant: str, repository: pathlib.Path, artifacts: pathlib.Path,
                  serving: ServingConfig = ServingConfig(), command: str = "", gates: Gates = Gates(),
                  progress: Callable[[str], None] = print, eval_limit: int | None = None) -> dict:
    """Build `variant` of `spec`; write it to `repository` unless it fails a gate (and not forced).

    `eval_limit` measures accuracy on that many examples spread over each split (quick runs, tests); the record
    says so. Default: every example.

    Returns its entry of the build record (also written to disk). Raises BuilderError subclasses for errors.
    """
    plan = steps(variant)
    configs = [s.config(spec.variants) for s in plan]
    workdir = artifacts / spec.name
    out = workdir / variant
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def step(message: str) -> None:
        progress(f"[{spec.name}_{variant} {time.perf_counter() - started:6.1f}s] {message}")

    if variant != "fp32" and not (workdir / "fp32" / "outputs.npz").is_file():
        raise_missing_baseline(spec)
    step("loading data splits")
    splits = load_splits(spec, workdir)
    step("loading model")
    model = resolve_callable(spec.factory, spec.source)(workdir)
    context = BuildContext(spec, workdir, splits, out, teacher=model, progress=step)
    torch_steps = [(s, c) for s, c in zip(plan, configs) if s.stage == "torch" and s.name != "fp32"]
    torch_part = "+".join(s.name for s, _ in torch_steps) or "fp32"
    fingerprint = json.dumps({"spec": spec_dict(spec), "steps": [[s.name, dataclasses.asdict(c)] for s, c in torch_steps]},
                             sort_keys=True, default=str)
    exported = reuse_export(workdir / torch_part, fingerprint) if torch_part != variant else None
    if exported is not None:  # e.g. distilled+int8 after distilled: same student, no second training
        step(f"reusing the {torch_part} export built with the same settings")
        onnx_path, torch_facts = exported
        context.notes.update(torch_facts.pop("notes"))
    else:
        for s, config in torch_steps:
            step(f"{s.name}: transforming the PyTorch model")
            model = s.module.apply(model, context, config)
        onnx_path, torch_facts = export_checked(model, spec, splits, out, step)
        torch_facts["notes"] = dict(context.notes)
        (out / "export.json").write_text(json.dumps({"fingerprint": fingerprint, **torch_facts}, default=str))
        torch_facts.pop("notes")
    from .torch2onnx import check_limits

    for s, config in zip(plan, configs):
        if s.stage == "onnx":
            step(f"{s.name}: transforming the ONNX model")
            onnx_path = s.module.apply(onnx_path, context, config)
            check_limits(onnx_path)

    step("measuring accuracy and agreement with fp32")
    if variant == "fp32":
        eval_limit = None  # the baseline's outputs on every example are the reference of every variant
    predict = onnx_predictor(onnx_session(onnx_path))
    measured = {name: splits[name].spread(eval_limit) for name in spec.evaluate}
    outputs = {name: run_split(predict, split, spec.sequence_mask) for name, split in measured.items()}
    accuracy = {name: score(spec.metric, outputs[name], split.labels) for name, split in measured.items()}
    first = spec.evaluate[0]
    if variant == "fp32":
        np.savez(out / "outputs.npz", **outputs[first])
    index = splits[first].spread_index(eval_limit)
    with np.load(workdir / "fp32" / "outputs.npz") as saved:
        reference = {k: saved[k][index] for k in saved.files}
    step("measuring latency (in-process ONNX Runtime, this variant and fp32 in the same run)")
    from .measure import agreement, latency_table

    latency = latency_table(onnx_path, spec, splits[first])
    fp32_latency = fp32_latency_table(workdir, spec, splits[first], latency if variant == "fp32" else None)
    speedup = {k: round(fp32_latency[k] / latency[k], 3) for k in latency}
    if variant != "fp32" and abs(mean_speedup(speedup) - 1.0) <= MARGINAL_SPEEDUP:
        # a verdict within the drift of this shared machine over a long build: fp32 and the variant side by side
        step(f"speedup {mean_speedup(speedup):.2f}x is marginal: measuring fp32 and this variant again, side by side")
        fp32_latency = latency_table(workdir / "fp32" / "model.onnx", spec, splits[first])
        latency = latency_table(onnx_path, spec, splits[first])
        speedup = {k: round(fp32_latency[k] / latency[k], 3) for k in latency}
        context.notes["latency_remeasured_side_by_side"] = True
    # fp32's accuracy on exactly the examples this variant was measured on
    drop = round((score(spec.metric, reference, splits[first].labels[index]) - accuracy[first]) * 100, 2)
    drop_se = paired_drop_se(spec, reference, outputs[first], splits[first].labels[index])
    failed_gates = []
    if drop > gates.max_accuracy_drop:
        failed_gates.append(f"accuracy drop {drop:.2f} points > {gates.max_accuracy_drop}")
    if variant != "fp32" and mean_speedup(speedup) < 1.0:
        if serving.device == "cpu":
            failed_gates.append("slower than fp32 (geometric mean speedup < 1.0)")
        else:  # the latency was measured here, on CPU: it says nothing about the GPU the model is built for
            context.notes["speed_gate"] = "not applied: slower than fp32 on CPU, but built for --device gpu"

    entry = {
        "triton_model": model_name(spec, variant),
        "accuracy": accuracy,
        "accuracy_drop_points": drop,
        "accuracy_drop_se_points": drop_se,
        "eval_examples": {name: len(split) for name, split in measured.items()},
        "agreement_with_fp32": agreement(spec, outputs[first], reference),
        **torch_facts,
        "onnx_bytes": onnx_path.stat().st_size,
        "latency_p50_ms": latency,
        "fp32_latency_p50_ms": fp32_latency,
        "speedup_vs_fp32": speedup,
        "gates_failed": failed_gates,
        "notes": context.notes,
        "command": command,
        "spec": spec_dict(spec),
        "variant_configs": {s.name: dataclasses.asdict(c) for s, c in zip(plan, configs)},
        "serving": dataclasses.asdict(serving) | {"intra_op_threads": serving.threads()},
        "versions": library_versions(),
    }
    if spec.sequence_mask:  # what the client and load tests pad text requests to (spec.length_buckets)
        entry["length_buckets"] = list(model_length_buckets(spec, workdir, splits[first]))
    from .profile import MACS_LENGTHS, macs_by_length, profile_table, sequence_axes

    step("profiling operators (ONNX Runtime profiler, batch 1 and 32)")
    entry["operator_profile"] = profile_table(onnx_path, spec, splits[first])
    if variant == "fp32" and sequence_axes(spec):  # once per model, on the untransformed torch model in hand
        step(f"counting MACs by layer type at sequence lengths {', '.join(map(str, MACS_LENGTHS))}")
        entry["macs_by_length"] = macs_by_length(model, spec, splits[first])
    if failed_gates and not gates.force:
        step("NOT written to the repository: " + "; ".join(failed_gates) + " (--force writes it anyway)")
        entry["version_dir"] = None
    else:
        name = model_name(spec, variant)
        config = build_config(name, spec, serving, onnx_path, length_buckets=len(entry.get("length_buckets", [])))
        version_dir = repo.write_model(repository, name, to_text(config), onnx_path)
        entry["version_dir"] = str(version_dir)
        step(f"wrote {version_dir}")
        if serving.device == "gpu":
            step("KIND_GPU instances" + (", TensorRT FP16" if serving.tensorrt else "") + ": for Triton on a GPU "
                 "machine (docker/); the embedded server has no GPU support and serves it on CPU, with a warning")
    if serving.text_endpoint:
        entry["text_endpoint"] = None
        if entry["version_dir"] is None:
            step("raw-text endpoint NOT written: its encoder was not written")
        else:
            from .text_endpoint import write_text_endpoint

            entry["text_endpoint"] = write_text_endpoint(spec, variant, repository, artifacts)
            step(f"wrote the raw-text ensemble {entry['text_endpoint']['model']} (texts truncated at "
                 f"{entry['text_endpoint']['max_tokens']} tokens)")
    entry["build_seconds"] = round(time.perf_counter() - started, 1)
    entry["built_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    update_record(workdir, spec.name, variant, entry)
    return entry


def mean_speedup(speedup: dict) -> float:
    """Geometric mean of the speedups over batch sizes and thread counts: what the speed gate judges."""
    return float(np.exp(np.mean(np.log(list(speedup.values())))))


def paired_drop_se(spec: ModelSpec, reference: dict, outputs: dict, labels: np.ndarray) -> float:
    """Standard error (points) of the accuracy drop, paired over the same examples: only the examples that one
    model gets right and the other wrong carry it. On 1,000 examples with 15 % disagreement it is ~1.2 points, as
    large as the default gate, which is why the record states it."""
    output = spec.metric.output
    difference = ((np.argmax(reference[output], 1) == labels).astype(float)
                  - (np.argmax(outputs[output], 1) == labels).astype(float))
    if len(difference) < 2:
        return 0.0
    return round(float(difference.std(ddof=1) / np.sqrt(len(difference)) * 100), 2)


_FP32_LATENCY: dict = {}  # (fp32 file, its mtime and size) -> latency table, measured once per process


def fp32_latency_table(workdir: pathlib.Path, spec: ModelSpec, split, measured: dict | None = None) -> dict:
    """fp32's latency table, measured once per build run (one process) and reused by every variant of that run:
    `--variant all` compares every variant with the same fp32 figures, and does not spend ~8 s re-measuring MiniLM
    for each. `measured`: the table just measured for fp32 itself."""
    from .measure import latency_table

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
    from .measure import count_macs, fixed_batch
    from .torch2onnx import export, verify

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
    from .errors import ConfigError
    from .text_endpoint import max_tokens

    tokenizer_file = workdir / "tokenizer.json"
    try:
        return length_buckets(spec, max_tokens(tokenizer_file))
    except (ConfigError, OSError):  # no tokenizer.json, or one without a truncation length
        pass
    return length_buckets(spec, int(split.inputs[spec.sequence_mask].sum(axis=1).max()))


def raise_missing_baseline(spec: ModelSpec):
    from .errors import VariantError

    raise VariantError(f"{spec.name}: the fp32 baseline is not built yet; every variant is measured against it",
                       hint=f"build it first: builder build --model {spec.name} --variant fp32 (or --variant all)")


def example_batch(spec: ModelSpec, batch: int = 2) -> dict:
    """Export example: batch and dynamic axes > 1 so the exporter keeps them symbolic."""
    return {t.name: np.ones(spec.example_shape(t, batch), dtype=t.dtype) for t in spec.inputs}


def spec_dict(spec: ModelSpec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def record_path(artifacts: pathlib.Path, model: str) -> pathlib.Path:
    return artifacts / model / "record.json"


def read_record(artifacts: pathlib.Path, model: str) -> dict:
    path = record_path(artifacts, model)
    return json.loads(path.read_text()) if path.is_file() else {"model": model, "variants": {}}


def update_record(workdir: pathlib.Path, model: str, variant: str, entry: dict) -> None:
    record = read_record(workdir.parent, model)
    record["variants"][variant] = entry
    path = record_path(workdir.parent, model)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
