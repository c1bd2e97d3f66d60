"""The demo: build the fp32 baseline of both demo models, serve them on the embedded Triton server, and compare
accuracy measured through the server (HTTP and gRPC) with accuracy in-process on the same examples."""

from __future__ import annotations

import pathlib
import time

from . import repository as repo
from .build import build_variant, model_name
from .data import load_splits
from .evaluate import onnx_predictor, onnx_session, run_split, score
from .models import resolve_spec
from .server import EmbeddedServer, free_port

DEMO_MODELS = ("digits", "minilm")
SERVED_BATCH = 16


def served_predictor(client, model: str):
    return lambda batch: client.infer(model, batch)


def compare_accuracy(client, model: str, spec, split, onnx_file: pathlib.Path) -> dict:
    """Accuracy of `split` through the server (`client`) and in-process ONNX Runtime on the same model file."""
    served = score(spec.metric, run_split(served_predictor(client, model), split, spec.sequence_mask, SERVED_BATCH),
                   split.labels)
    local = score(spec.metric, run_split(onnx_predictor(onnx_session(onnx_file)), split, spec.sequence_mask,
                                         SERVED_BATCH), split.labels)
    return {"served": served, "in_process": local}


def run_demo(repository: pathlib.Path, artifacts: pathlib.Path, examples: int | None = 1000,
             rebuild: bool = False, progress=print) -> list[dict]:
    """Build (unless already built), serve, evaluate over both protocols; return one row per model, split, protocol."""
    from client import TritonClient

    specs = [resolve_spec(name) for name in DEMO_MODELS]
    for spec in specs:
        name = model_name(spec, "fp32")
        if rebuild or name not in repo.list_models(repository):
            build_variant(spec, "fp32", repository, artifacts, command=f"builder build --model {spec.name} --variant fp32",
                          progress=progress)
        else:
            progress(f"[{name}] already in {repository}; `builder demo --rebuild` rebuilds it")
    rows = []
    progress("starting the embedded Triton server ...")
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        progress("models: " + ", ".join(f"{m.name} {m.state}" for m in server.models()))
        for spec in specs:
            name = model_name(spec, "fp32")
            onnx_file = repo.latest_model_file(repository, name)
            splits = load_splits(spec, artifacts / spec.name)
            for split_name in spec.evaluate:
                split = splits[split_name].spread(examples)
                for url in (server.http_url, server.grpc_url):
                    started = time.perf_counter()
                    with TritonClient(url) as client:
                        result = compare_accuracy(client, name, spec, split, onnx_file)
                    rows.append({"model": name, "split": split_name, "examples": len(split),
                                 "protocol": url.split("://")[0], **result,
                                 "seconds": round(time.perf_counter() - started, 1)})
                    progress(f"[{name}] {split_name} over {rows[-1]['protocol']}: served {result['served']:.4f} "
                             f"in-process {result['in_process']:.4f}")
    return rows
