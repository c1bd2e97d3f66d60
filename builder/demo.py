"""The demo, the README's first command: build the standard variants of both demo models, serve them on the
embedded Triton server, check that served accuracy equals in-process accuracy, load-test every variant with Locust,
and write the report that says which variant to ship. `quick`: fp32 and int8 only, short load steps. Given
`specs` (a user's model: `builder demo --hf-model DIR --data FILE`), the same for those models instead."""

from __future__ import annotations

import pathlib
import shlex
import time

from client import TritonClient
from loadtests.report import build_report, write_report
from loadtests.run import LoadSettings, Target, run_load

from .core.artifacts import load_splits, read_records
from .core.errors import BuilderError
from .core.evaluate import onnx_predictor, onnx_session, outputs_on, score
from .core.names import model_name
from .pipeline.build import build_variant
from .pipeline.models import resolve_spec
from .serving import repository as repo
from .serving.server import EmbeddedServer, free_port

DEMO_MODELS = ("digits", "minilm")
QUICK_VARIANTS = ("fp32", "int8")
# accuracy of the demo's variants on each evaluation split (quick: a spread of 500), paired with fp32's outputs on
# the same examples. The full demo measures every example, as `builder build` does: on 1,000 MiniLM examples the
# drop's standard error (~1.2 points) was as large as the gate, and noise decided which variants were served.
EVAL_EXAMPLES = {False: None, True: 500}  # {quick: examples}
SERVED_BATCH = 16


def served_predictor(client, model: str):
    return lambda batch: client.infer(model, batch)


def compare_accuracy(client, model: str, spec, split, onnx_file: pathlib.Path) -> dict:
    """Accuracy of `split` through the server (`client`) and in-process ONNX Runtime on the same model file."""
    served = score(spec.metric, outputs_on(served_predictor(client, model), spec, split, SERVED_BATCH), split.labels)
    local = score(spec.metric, outputs_on(onnx_predictor(onnx_session(onnx_file)), spec, split, SERVED_BATCH),
                  split.labels)
    return {"served": served, "in_process": local}


def build_all(specs, repository: pathlib.Path, artifacts: pathlib.Path, quick: bool, rebuild: bool,
              progress) -> list[str]:
    """Build each demo model's variants that are not in the repository yet (a variant refused before with the same
    recipe and inputs keeps its recorded verdict, unless `rebuild`); return the failures' rebuild commands."""

    failed = []
    for spec in specs:
        variants = QUICK_VARIANTS if quick else spec.standard_variants
        for variant in variants:
            name = model_name(spec.name, variant)
            command = f"builder build {source_flag(spec)} --variant {variant}"
            if not rebuild and name in repo.list_models(repository):
                progress(f"[{name}] already in {repository}; `builder demo --rebuild` rebuilds it")
                continue
            try:
                entry = build_variant(spec, variant, repository, artifacts, command=command, progress=progress,
                                      eval_limit=EVAL_EXAMPLES[quick], rebuild=rebuild)
            except BuilderError as e:  # one failed variant never stops the others
                progress(f"[{name}] FAILED: {e}")
                failed.append(command)
                continue
            if entry["gates_failed"]:
                progress(f"[{name}] not served: " + "; ".join(entry["gates_failed"])
                         + (" (verdict reused from the build record; `builder demo --rebuild` trains it again)"
                            if entry.get("verdict_reused") else ""))
    return failed


def source_flag(spec) -> str:
    """How a build command names `spec`: a demo model by name, any other by its spec file."""
    return f"--model {spec.name}" if spec.name in DEMO_MODELS else f"--config {shlex.quote(spec.source)}"


def check_accuracy(server, specs, repository: pathlib.Path, artifacts: pathlib.Path, examples: int | None,
                   progress) -> list[dict]:
    """fp32 of each demo model, every evaluation split, both protocols: served vs in-process accuracy."""

    rows = []
    for spec in specs:
        name = model_name(spec.name, "fp32")
        onnx_file = repo.latest_model_file(repository, name)
        splits = load_splits(spec, artifacts / spec.name)
        for split_name in spec.evaluate:
            split = splits[split_name].spread(examples)
            for url in (server.http_url, server.grpc_url):
                with TritonClient(url) as client:
                    result = compare_accuracy(client, name, spec, split, onnx_file)
                rows.append({"model": name, "split": split_name, "examples": len(split),
                             "protocol": url.split("://")[0], **result})
                progress(f"[{name}] {split_name} over {rows[-1]['protocol']}: served {result['served']:.4f} "
                         f"in-process {result['in_process']:.4f}")
    return rows


def run_demo(repository: pathlib.Path, artifacts: pathlib.Path, reports: pathlib.Path, examples: int | None = 500,
             rebuild: bool = False, quick: bool = False, slo_p99_ms: float = 50.0, max_accuracy_drop: float = 1.0,
             progress=print, specs: list | None = None) -> dict:
    """Everything, in order; returns {"accuracy": rows, "report": the report dict, "paths", "failed", "seconds"}."""
    started = time.perf_counter()

    def phase(text):
        progress(f"\n== {text} ({time.perf_counter() - started:.0f} s) ==")

    specs = specs or [resolve_spec(name) for name in DEMO_MODELS]
    phase("1/4 building " + ("fp32 and int8" if quick else "the standard variants") + " of "
          + ", ".join(s.name for s in specs))
    failed = build_all(specs, repository, artifacts, quick, rebuild, progress)
    phase("2/4 serving them on the embedded Triton server")
    out = reports / (("demo-quick-" if quick else "demo-") + time.strftime("%Y%m%d-%H%M%S"))
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        progress("models: " + ", ".join(f"{m.name} {m.state}" for m in server.models()))
        accuracy = check_accuracy(server, specs, repository, artifacts, 300 if quick else examples, progress)
        phase("3/4 load time and memory of every served variant, then a Locust load test of each")
        settings = LoadSettings(users=(1, 4), duration_s=4 if quick else 5)
        results = run_load(["all"], Target(server.http_url, server.grpc_url, server.metrics_url), settings, artifacts,
                           out, progress=progress, footprint=True, repository=repository,
                           perf_analyzer=() if quick else [model_name(s.name, "fp32") for s in specs])
    phase("4/4 writing the report")
    report = build_report(results, read_records(artifacts), slo_p99_ms, max_accuracy_drop)
    md, html = write_report(report, out)
    return {"accuracy": accuracy, "report": report, "paths": (html, md), "failed": failed,
            "seconds": round(time.perf_counter() - started)}
