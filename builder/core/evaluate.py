"""Run a split through a model (in-process ONNX Runtime or a served one) and score it with the spec's metric."""

from __future__ import annotations

from typing import Callable

import numpy as np

Predict = Callable[[dict], dict]  # inputs (name -> array) -> outputs (name -> array)


def onnx_session(path, threads: int | None = None, profile_prefix: str | None = None):
    """A CPU session; `threads` intra-op threads (default: ONNX Runtime's); with `profile_prefix`, ONNX Runtime's
    profiler on (`session.end_profiling()` writes `<profile_prefix>_<time>.json` and returns its path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(session) -> Predict:
    names = [o.name for o in session.get_outputs()]
    return lambda batch: dict(zip(names, session.run(names, batch)))


def run_split(predict: Predict, split, sequence_mask: str | None = None, batch_size: int = 32) -> dict:
    """All outputs of `predict` over `split`, concatenated in the split's order."""
    chunks: dict[str, list] = {}
    for batch, _ in split.batches(batch_size, sequence_mask):
        for name, value in predict(batch).items():
            chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def score(metric, outputs: dict, labels: np.ndarray) -> float:
    """The spec's metric; `accuracy` is top-1 over `metric.output`."""
    if metric.name == "accuracy":
        return float(np.mean(np.argmax(outputs[metric.output], axis=1) == labels))
    raise ValueError(f"unknown metric {metric.name}")  # spec.py admits only known metrics

