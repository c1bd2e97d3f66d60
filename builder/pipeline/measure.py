"""What every variant is measured on: accuracy, agreement with fp32, parameters, file size, MACs, latency.

MACs are counted once per torch model with torch's FlopCounterMode on one example (batch 1, dynamic axes at their
example size), as FLOPs / 2. It counts matrix multiplies and convolutions (Linear, attention's QK^T and AV, Conv);
it does not count element-wise ops, normalisation, softmax, pooling or embedding lookups. Quantized and fp16
variants perform the same multiply-accumulates in lower precision, so they inherit their torch model's count.
"""

from __future__ import annotations

import gzip
import pathlib
import time

import numpy as np

from ..core.evaluate import agreement_top1, onnx_session, outputs_on, score

LATENCY_BATCHES = (1, 32)
LATENCY_THREADS = (1, 2)
MIN_RUNS, MIN_SECONDS = 5, 0.5


def count_macs(model, example: dict) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: torch.from_numpy(v) for k, v in example.items()}
    # grad enabled and the MATH attention kernel: fused no-grad fast paths and CPU SDPA are counted as 0 otherwise
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return int(counter.get_total_flops() // 2)


def count_onnx_macs(model, example: dict) -> int:
    """Multiply-accumulates of one run of an ONNX graph (`onnx.ModelProto`) on `example`, counted from its shapes:
    MatMul, Gemm and Conv, the ops that hold nearly all of a model's MACs (what count_macs counts for a torch
    model). A node whose shapes shape inference cannot resolve is not counted, so this is a lower bound."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: its input shapes are fixed below
    for value in model.graph.input:
        if value.name in example:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, example[value.name].shape):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        a, out = shapes.get(node.input[0]) if node.input else None, shapes.get(node.output[0])
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if out is None or a is None or w is None:
            continue
        if node.op_type == "MatMul":
            macs += int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            macs += int(np.prod(out)) * (a[0] if trans_a else a[-1])
        elif node.op_type == "Conv":  # weight [out channels, in channels / group, *kernel]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return int(macs)


def fixed_batch(spec, split, batch: int) -> dict:
    """`batch` real examples with every dynamic non-batch axis cut (or zero-padded) to its example size."""
    picked = split.spread(batch)
    out = {}
    for t in spec.inputs:
        array = picked.inputs[t.name]
        while len(array) < batch:  # a split smaller than the batch: repeat it
            array = np.concatenate([array, array])[:batch]
        for axis, name in t.dynamic_dims.items():
            if axis == 0:
                continue
            size = spec.example_sizes[name]
            if array.shape[axis] >= size:
                array = np.take(array, range(size), axis=axis)
            else:
                pad = [(0, 0)] * array.ndim
                pad[axis] = (0, size - array.shape[axis])
                array = np.pad(array, pad)
        out[t.name] = np.ascontiguousarray(array)
    return out


def latency_p50_ms(onnx_file, inputs: dict, threads: int) -> float:
    """Median ms of one run in a fresh, warmed-up session with `threads` intra-op threads."""

    session = onnx_session(onnx_file, threads=threads)
    names = [o.name for o in session.get_outputs()]
    for _ in range(3):
        session.run(names, inputs)
    times = []
    started = time.perf_counter()
    while len(times) < MIN_RUNS or time.perf_counter() - started < MIN_SECONDS:
        t = time.perf_counter()
        session.run(names, inputs)
        times.append(time.perf_counter() - t)
    del session
    return round(float(np.median(times)) * 1000, 3)


def latency_table(onnx_file, spec, split) -> dict:
    """{"b1_t1": ms, "b1_t2": ms, "b32_t1": ms, "b32_t2": ms}: p50 at batch 1 and 32 with 1 and 2 threads."""
    table = {}
    for batch in LATENCY_BATCHES:
        inputs = fixed_batch(spec, split, batch)
        for threads in LATENCY_THREADS:
            table[f"b{batch}_t{threads}"] = latency_p50_ms(onnx_file, inputs, threads)
    return table


def agreement(spec, outputs: dict, reference: dict, labels: np.ndarray) -> dict:
    """Top-1 agreement on the metric's labels (builder/core/evaluate.py); mean cosine similarity of every float
    output but a classifier's logits (an embedding model's metric output included)."""
    metric = spec.metric.output
    result = {"top1": agreement_top1(spec.metric, outputs, reference, labels)}
    for t in spec.outputs:
        if (t.name != metric or spec.metric.name != "accuracy") and t.name in reference \
                and t.dtype.startswith("float"):
            a = outputs[t.name].reshape(len(outputs[t.name]), -1).astype(np.float64)
            b = reference[t.name].reshape(len(reference[t.name]), -1).astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            result[f"cosine_{t.name}"] = float(np.mean(cos))
    return result


def gzip_bytes(path: pathlib.Path) -> int:
    """Size of the file after gzip at level 6: what a download or a registry layer carries (clustered weights take
    few distinct values, so they compress far better than fp32's)."""
    return len(gzip.compress(pathlib.Path(path).read_bytes(), compresslevel=6))


def torch_outputs(model, spec, split) -> dict:
    """A PyTorch model's outputs (eval mode, no gradients) on `split`, by the spec's output names."""
    import torch

    names = [t.name for t in spec.outputs]

    def predict(batch):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        out = (out,) if isinstance(out, torch.Tensor) else out
        return dict(zip(names, (o.numpy() for o in out)))

    return outputs_on(predict, spec, split)


def torch_accuracy(model, spec, split) -> float:
    """The spec's metric of a PyTorch model (eval mode, no gradients) on `split`: a student before and after, a
    training checkpoint."""
    return score(spec.metric, torch_outputs(model, spec, split), split.labels)
