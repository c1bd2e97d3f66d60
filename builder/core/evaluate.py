"""Run a split through a model (in-process ONNX Runtime or a served one) and score it with the spec's metric.

The metrics (a spec's `metric.name`):
- `accuracy`: top-1 over the metric output's last axis. Labels are one class per example ([batch], a classifier's
  [batch, classes] logits) or one per token ([batch, seq], a token classifier's [batch, seq, classes] logits), where
  IGNORE marks a position that is not scored: padding, special tokens, a word's second and later sub-words.
- `knn_accuracy`: for an embedding model ([batch, dim]). Each example gets the label of its most similar *other*
  example of the same split (cosine of the metric output): leave-one-out nearest-neighbour accuracy, what retrieval
  with the embedding would answer, measured with the class labels alone.

Both are means over scored units (examples or tokens), each unit right or wrong, so one paired standard error
serves both (`paired_drop_se`); tokens are clustered by their example, as they are not independent.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Predict = Callable[[dict], dict]  # inputs (name -> array) -> outputs (name -> array)
IGNORE = -100  # a token label that is not scored (PyTorch's cross_entropy ignore_index and Transformers' convention)


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


def run_split(predict: Predict, split, sequence_mask: str | None = None, batch_size: int = 32,
              sequence_outputs: tuple[str, ...] = ()) -> dict:
    """All outputs of `predict` over `split`, concatenated in the split's order. Batches are trimmed to their
    longest example (`sequence_mask`); the `sequence_outputs` (one row per token) are padded back with zeros to the
    split's width, so that they line up with its per-token labels."""
    width = split.inputs[sequence_mask].shape[1] if sequence_mask else None
    chunks: dict[str, list] = {}
    for batch, _ in split.batches(batch_size, sequence_mask):
        for name, value in predict(batch).items():
            if name in sequence_outputs and value.shape[1] < width:
                value = np.pad(value, [(0, 0), (0, width - value.shape[1])] + [(0, 0)] * (value.ndim - 2))
            chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def outputs_on(predict: Predict, spec, split, batch_size: int = 32) -> dict:
    """run_split with the spec's padding rules: what every measurement of a spec's model runs."""
    return run_split(predict, split, spec.sequence_mask, batch_size, spec.sequence_outputs)


def hits(metric, outputs: dict, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, scored) per example: how many of its scored units (itself, or its tokens) the model got right, and
    how many it has."""
    predicted, labels = predictions(metric, outputs, labels), np.asarray(labels)
    if labels.ndim == 1:
        return (predicted == labels).astype(float), np.ones(len(labels))
    scored = labels != IGNORE
    return ((predicted == labels) & scored).sum(axis=1).astype(float), scored.sum(axis=1).astype(float)


def predictions(metric, outputs: dict, labels: np.ndarray) -> np.ndarray:
    """The label the model gives each unit, shaped like `labels` (IGNORE'd tokens too): compared with the labels
    for the metric, with another model's for the agreement."""
    values = outputs[metric.output]
    if metric.name == "accuracy":
        return np.argmax(values, axis=-1)
    if metric.name == "knn_accuracy":
        return np.asarray(labels)[nearest_other(values)]
    raise ValueError(f"unknown metric {metric.name}")  # spec.py admits only known metrics


def nearest_other(embeddings: np.ndarray, block: int = 1024) -> np.ndarray:
    """Index of each row's most cosine-similar other row (blocks of rows: memory stays at block x rows)."""
    x = embeddings.reshape(len(embeddings), -1).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    nearest = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), block):
        similarity = x[start:start + block] @ x.T
        rows = np.arange(len(similarity))
        similarity[rows, start + rows] = -np.inf  # not itself
        nearest[start:start + block] = similarity.argmax(axis=1)
    return nearest


def agreement_top1(metric, outputs: dict, reference: dict, labels: np.ndarray) -> float:
    """Share of scored units to which two models give the same label."""
    a, b, labels = predictions(metric, outputs, labels), predictions(metric, reference, labels), np.asarray(labels)
    same = a == b
    return float(same[labels != IGNORE].mean() if labels.ndim > 1 else same.mean())


def paired_drop_se(metric, reference: dict, outputs: dict, labels: np.ndarray) -> float:
    """Standard error (points) of the metric's drop from `reference` to `outputs`, paired over the same examples:
    only the units one model gets right and the other wrong carry it. Tokens count by their example (a cluster
    standard error); with one unit per example it is the plain paired one. On 1,000 examples with 15 %
    disagreement it is ~1.2 points, as large as the default gate, which is why the record states it."""
    right_ref, scored = hits(metric, reference, labels)
    right_out, _ = hits(metric, outputs, labels)
    difference, total = right_ref - right_out, scored.sum()
    if len(difference) < 2 or total == 0:
        return 0.0
    drop = difference.sum() / total
    variance = len(difference) / (len(difference) - 1) * ((difference - drop * scored) ** 2).sum()
    return round(float(np.sqrt(variance) / total * 100), 2)


def score(metric, outputs: dict, labels: np.ndarray) -> float:
    """The spec's metric: the share of scored units (examples or tokens) the model gets right."""
    right, scored = hits(metric, outputs, labels)
    return float(right.sum() / max(scored.sum(), 1))
