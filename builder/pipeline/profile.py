"""Where the time goes: ONNX Runtime kernel time by operator, and MACs by layer type against sequence length.

Operator profile (`operator_profile`, `profile_table`): ONNX Runtime's own profiler on a fresh session with one
intra-op thread, warm-up runs excluded. Every node's `*_kernel_time` event is summed by its operator type, as ORT
ran it (after its graph optimisations, so fused ops such as FusedMatMul or SkipLayerNormalization appear as
themselves), and by category:

  matmul/gemm/conv     MatMul, Gemm, Conv and their fused, integer and quantized forms (MatMulInteger,
                       DynamicQuantizeMatMul, QLinearMatMul, MatMulNBits, FusedMatMul, FusedConv, QGemm, ...), and
                       fused attention kernels (Attention, MultiHeadAttention, ...), which are mostly matrix products
  quantize/dequantize  QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear
  normalisation        LayerNormalization, SkipLayerNormalization, BatchNormalization, SimplifiedLayerNormalization,
                       EmbedLayerNormalization, ...
  softmax              Softmax, LogSoftmax
  reshape/layout       Reshape, Transpose, Gather, Concat, Slice, Squeeze, Unsqueeze, Expand, Shape, Cast, ...
                       (data movement and indexing, embedding lookups included)
  element-wise         Add, Mul, Div, Sub, Erf, Gelu, FastGelu, BiasGelu, Relu, Tanh, Sqrt, Pow, Where, ...
  pooling/reduce       MaxPool, AveragePool, GlobalAveragePool, ReduceMean, ReduceSum, ArgMax, ...
  other                any operator type not listed here (still listed under its own name in `by_op_type`)

Kernel time is the time inside operator kernels; a run's wall time adds the executor's own overhead between them.
ONNX Runtime's dynamic int8 kernels (DynamicQuantizeMatMul, MatMulIntegerToFloat) quantize their activations inside
the kernel: that time counts as matmul/gemm/conv, not quantize/dequantize.

MACs by length (`macs_by_length`): torch's FlopCounterMode per aten op (as builder.pipeline.measure.count_macs, MATH
attention kernel, grad enabled), split into "linear" (aten.mm / addmm / linear: projections, feed-forward, heads),
"attention" (aten.bmm / baddbmm / scaled-dot-product ops: QK^T and AV) and "other" (convolutions, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import tempfile
import time

import numpy as np

from ..core.evaluate import onnx_session
from .measure import fixed_batch

PROFILE_BATCHES = (1, 32)
PROFILE_WARMUP = 1  # runs before the profiled ones: allocation and first-touch costs, excluded from the shares
# At least RUNS runs and SECONDS, at most MAX_RUNS: one batch-32 MiniLM run (0.6-1.1 s on 2 shared cores) already
# holds ~220 kernels; batch 1 gets ~15 runs in the same time. Measured on MiniLM fp32 with other work on the
# cores: category shares moved by up to ~4 points between repeats (the matmul share by ~1): read them as shares,
# not as exact timings.
PROFILE_RUNS, PROFILE_SECONDS, PROFILE_MAX_RUNS = 1, 0.5, 100
MACS_LENGTHS = (16, 64, 256)

CATEGORIES = {
    "matmul/gemm/conv": (
        "MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
        "MatMulNBits", "MatMulBnb4", "MatMulIntegerToFloat", "FusedMatMul", "FusedConv", "FusedGemm", "NhwcFusedConv",
        "DynamicQuantizeMatMul", "QGemm", "QLinearConvTranspose", "Attention", "MultiHeadAttention", "QAttention",
        "GroupQueryAttention", "DecoderAttention", "Einsum"),
    "quantize/dequantize": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "normalisation": (
        "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "BatchNormalization", "InstanceNormalization",
        "GroupNormalization", "GroupNorm", "SkipGroupNorm", "RMSNormalization", "LpNormalization",
        "MeanVarianceNormalization", "LRN"),
    "softmax": ("Softmax", "LogSoftmax"),
    "reshape/layout": (
        "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "Squeeze",
        "Unsqueeze", "Expand", "Shape", "Size", "Cast", "CastLike", "Flatten", "Identity", "Tile", "Pad", "ScatterND",
        "ScatterElements", "ConstantOfShape", "Range", "NonZero", "Trilu", "DepthToSpace", "SpaceToDepth",
        "MemcpyFromHost", "MemcpyToHost", "QLinearConcat", "Resize", "Upsample"),
    "element-wise": (
        "Add", "Mul", "Div", "Sub", "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Relu", "LeakyRelu", "PRelu",
        "Tanh", "Sigmoid", "Sqrt", "Pow", "Where", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Clip", "Min", "Max",
        "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Floor",
        "Ceil", "Round", "Sign", "Sin", "Cos", "HardSigmoid", "HardSwish", "Softplus", "Selu", "Elu", "Celu", "Mish",
        "BiasAdd", "BiasDropout", "Dropout", "IsNaN", "IsInf", "Mod", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
        "QLinearLeakyRelu"),
    "pooling/reduce": (
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceSum",
        "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
        "ReduceSumSquare", "ArgMax", "ArgMin", "TopK", "CumSum", "QLinearAveragePool", "QLinearGlobalAveragePool"),
    "other": (),
}
CATEGORY_OF = {op: category for category, ops in CATEGORIES.items() for op in ops}

LINEAR_OPS = ("aten.mm", "aten.addmm", "aten.linear")
ATTENTION_OPS = ("aten.bmm", "aten.baddbmm", "aten._scaled_dot_product_attention_math",
                 "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_flash_attention",
                 "aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_cudnn_attention",
                 "aten.scaled_dot_product_attention")


def category(op_type: str) -> str:
    """The category of an ONNX Runtime operator type; "other" when it is not listed."""
    return CATEGORY_OF.get(op_type, "other")


def operator_profile(onnx_file, inputs: dict, threads: int = 1, runs: int = PROFILE_RUNS,
                     warmup: int = PROFILE_WARMUP, min_seconds: float = PROFILE_SECONDS) -> dict:
    """Kernel-time shares of one warmed-up ONNX Runtime session (CPU, `threads` intra-op threads) on `inputs`.

    Runs `warmup` runs that the result leaves out, then at least `runs` runs and `min_seconds` (at most
    PROFILE_MAX_RUNS). Returns {"kernel_ms_per_run": ms (sum of kernel times, per profiled run), "runs": n,
    "threads": threads, "by_category": {category: percent} (every category of CATEGORIES, in its order),
    "by_op_type": {op type: percent} (largest first)}; percents of kernel time, summing to 100 up to rounding.
    """

    with tempfile.TemporaryDirectory(prefix="ort_profile_") as tmp:
        session = onnx_session(onnx_file, threads=threads, profile_prefix=str(pathlib.Path(tmp) / "ort"))
        names = [o.name for o in session.get_outputs()]
        for _ in range(warmup):
            session.run(names, inputs)
        count, started = 0, time.perf_counter()
        while count < runs or (time.perf_counter() - started < min_seconds and count < PROFILE_MAX_RUNS):
            session.run(names, inputs)
            count += 1
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
        del session
    return summarise_trace(events, skip_runs=warmup) | {"threads": threads}


def summarise_trace(events: list[dict], skip_runs: int = 0) -> dict:
    """Kernel-time shares from an ONNX Runtime profile trace (Chrome trace events), ignoring every kernel that ran
    before the start of run `skip_runs` (0-based; `model_run` events mark the runs)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    if not runs:
        raise ValueError(f"the profile holds no model_run after the first {skip_runs}")
    start = runs[0]["ts"]
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + float(e["dur"])  # µs
    total = sum(by_op.values())
    by_category = dict.fromkeys(CATEGORIES, 0.0)
    for op, us in by_op.items():
        by_category[category(op)] += us

    def percent(us: float) -> float:
        return round(100.0 * us / total, 2) if total else 0.0

    return {"kernel_ms_per_run": round(total / 1000 / len(runs), 3), "runs": len(runs),
            "by_category": {c: percent(us) for c, us in by_category.items()},
            "by_op_type": {op: percent(us) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def profile_table(onnx_file, spec, split) -> dict:
    """{"b1": operator_profile, "b32": operator_profile}: real examples of `split` at the spec's example sizes
    (builder.pipeline.measure.fixed_batch), one intra-op thread."""

    return {f"b{batch}": operator_profile(onnx_file, fixed_batch(spec, split, batch), threads=1)
            for batch in PROFILE_BATCHES}


def sequence_axes(spec) -> list[str]:
    """Names of the non-batch dynamic axes of the spec's inputs (e.g. ["seq"]), in order of appearance."""
    names: list[str] = []
    for t in spec.inputs:
        for axis, name in t.dynamic_dims.items():
            if axis != 0 and name not in names:
                names.append(name)
    return names


def macs_split(model, example: dict) -> dict:
    """{"linear", "attention", "other"}: MACs of one forward of `model` on `example` (numpy inputs), by aten op."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: torch.from_numpy(v) for k, v in example.items()}
    # as builder.pipeline.measure.count_macs: fused no-grad fast paths and CPU SDPA are counted as 0 otherwise
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    split = {"linear": 0, "attention": 0, "other": 0}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op)
        kind = "linear" if name in LINEAR_OPS else "attention" if name in ATTENTION_OPS else "other"
        split[kind] += int(flops) // 2
    return split


def fit_growth(rows: list[dict]) -> dict:
    """Least squares of attention = a*n^2 and linear = b*n + c on the rows counted (see macs_by_length)."""
    n = np.array([r["length"] for r in rows], dtype=np.float64)
    attention = np.array([r["attention"] for r in rows], dtype=np.float64)
    linear = np.array([r["linear"] for r in rows], dtype=np.float64)
    a = float((attention * n ** 2).sum() / (n ** 4).sum())
    if len(n) >= 2:
        b, c = (float(v) for v in np.polyfit(n, linear, 1))
    else:  # one length: no intercept can be told apart
        b, c = float(linear[0] / n[0]), 0.0
    predicted = np.concatenate([a * n ** 2, b * n + c])
    measured = np.concatenate([attention, linear])
    error = float(np.max(np.abs(predicted - measured) / np.maximum(measured, 1.0)))
    return {"attention": "a*n^2", "linear": "b*n + c", "a": a, "b": b, "c": c,
            "max_relative_error": round(error, 6), "fitted_on": [int(v) for v in n]}


def macs_by_length(model, spec, split, lengths=MACS_LENGTHS) -> dict | None:
    """MACs per example by layer type at each sequence length, and where attention overtakes the linear layers.

    One real example of `split` (builder.pipeline.measure.fixed_batch) with every non-batch dynamic axis cut or zero-padded
    to each length; padding is computed on like real tokens, so the counts are those of a length-n input. None
    when the spec's inputs have no non-batch dynamic axis.

    Returns {"axes": [names], "lengths": [...], "per_length": [{"length", "linear", "attention", "other",
    "attention_percent"}], "fit": {...}, "crossover_length": int | None, "crossover_extrapolated": bool,
    "crossover_text": str}. The fit is least squares on the measured points: attention = a*n^2 (QK^T and AV are
    n x n x d each per layer), linear = b*n + c (every token goes through the same projections; c: layers that
    run once per example, such as a classification head). The crossover is the smallest integer n with
    a*n^2 >= b*n + c, i.e. ceil((b + sqrt(b^2 + 4ac)) / 2a); None when attention is 0.

    A length the model refuses (e.g. beyond its position embeddings) is left out and listed in "failed_lengths"
    ({length: first line of the error}); the fit uses the others. This is an analysis: it never fails a build.
    """

    axes = sequence_axes(spec)
    if not axes:
        return None
    rows, failed = [], {}
    for n in lengths:
        sized = dataclasses.replace(spec, example_sizes={**spec.example_sizes, **dict.fromkeys(axes, int(n))})
        try:
            macs = macs_split(model, fixed_batch(sized, split, 1))
        except Exception as e:  # any model error means the same here: this length cannot be counted
            failed[int(n)] = (str(e).strip().splitlines() or [type(e).__name__])[0]
            continue
        total = sum(macs.values())
        rows.append({"length": int(n), **macs,
                     "attention_percent": round(100.0 * macs["attention"] / total, 2) if total else 0.0})
    if not rows:
        return {"axes": axes, "lengths": [], "per_length": [], "failed_lengths": failed, "fit": None,
                "crossover_length": None, "crossover_extrapolated": False,
                "crossover_text": "No length could be counted: " + "; ".join(f"{k}: {v}" for k, v in failed.items())}
    fit = fit_growth(rows)
    n, a, b, c, error = np.array(fit["fitted_on"]), fit["a"], fit["b"], fit["c"], fit["max_relative_error"]
    if a <= 0:
        crossover, text = None, "No attention MACs were counted: attention never overtakes the linear layers."
    else:
        crossover = max(1, math.ceil((b + math.sqrt(max(b * b + 4 * a * c, 0.0))) / (2 * a)))
        where = ("extrapolated beyond the measured lengths" if crossover > n.max()
                 else "within the measured lengths")
        text = (f"Attention MACs reach the linear layers' MACs at {' / '.join(axes)} length {crossover:,} "
                f"({where}): fitted on lengths {', '.join(str(int(v)) for v in n)} as attention = {a:.4g}*n^2 and "
                f"linear = {b:.4g}*n + {c:.4g} MACs per example (max fit error {100 * error:.2f} %).")
    return {"axes": axes, "lengths": [int(v) for v in n], "per_length": rows, "failed_lengths": failed, "fit": fit,
            "crossover_length": crossover, "crossover_extrapolated": bool(crossover is not None and crossover > n.max()),
            "crossover_text": text}
