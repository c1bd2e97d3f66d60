"""`int8`, `int8-dynamic`, `int8-static`: ONNX Runtime quantization to signed 8-bit weights.

`dynamic` quantizes weights ahead of time (per channel) and activations on the fly: right for transformer-style
models, whose activation ranges vary by input. `static` writes a QDQ model whose activation scales come from a
calibration pass over real examples (MinMax, Entropy or Percentile): right for CNNs. `int8` (method auto) picks
static when the graph has convolutions and dynamic otherwise. quant_pre_process (shape inference + ORT graph
optimisation) runs first, as ONNX Runtime recommends; before it, on transformer graphs, ONNX Runtime's transformer
optimizer fuses what it can (`fusion`, on by default; what Optimum's O1/O2 apply: on the MiniLM export, each
layer's bias Add + Gelu into BiasGelu). A session fuses that itself at load on a float graph, but not once
quantization has replaced the MatMul before it: on
MiniLM the fused int8 ran 1.11-1.13x the unfused int8 at batch 32 with the same validation accuracy, where fused
fp32 ran no faster than fp32 (docs/compression.md, "Graph fusion"); a graph with nothing to fuse (a CNN) is left
as it is. The record's `int8_fusion` lists the fused operators. Nodes listed in `exclude_nodes`, of an op type in
`exclude_op_types`, or (with `exclude_last`) the last MatMul/Gemm/Conv - the classifier, whose errors flip
predictions directly - stay in float; the record lists them.

With an accuracy budget (`builder build --max-accuracy-drop`, the build's own gate) and `accuracy_search` on, a
quantized model whose drop against fp32 on the validation split exceeds the budget is searched: the nodes that hurt
most return to float until it fits (builder/pipeline/variants/int8_search.py). The record's `int8_search` holds the ranking,
every trial (reverted nodes, accuracy, b1 latency) and the speed the reverts cost.

Weights are quantized to 7 bits (`reduce_range`) on x86 CPUs without VNNI, 8 bits otherwise (`reduce_range_for`);
the record's `int8_reduce_range` says which and why. A model is quantized for the ISA it is built on: one built on
a VNNI machine and served on an AVX2 one can saturate there (set `reduce_range: true` to build for both).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from ...core.errors import VariantError
from ...core.evaluate import onnx_predictor, onnx_session, outputs_on, score
from ...core.machine import cpu_isa
from ..measure import fixed_batch, latency_p50_ms
from . import int8_search

STAGE = "onnx"
PRECISION = "int8"  # of the weights this step leaves
TRAINS = False
SIZE_ONLY = False
METHODS = ("auto", "dynamic", "static")
CALIBRATIONS = ("minmax", "entropy", "percentile")
RANKINGS = ("auto", "leave-one-out", "sqnr")
LEAVE_ONE_OUT_MAX = 24  # nodes; beyond, auto ranks a static graph by SQNR in one pass
SQNR_EXAMPLES = 32  # validation examples the SQNR pass stores every activation of
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Config:
    method: str = "auto"
    calibration: str = "minmax"
    calibration_examples: int = 256
    per_channel: bool = True
    exclude_last: bool = False
    exclude_op_types: tuple = ()
    exclude_nodes: tuple = ()
    accuracy_search: bool = True  # with a build accuracy budget: return the worst nodes to float until it fits
    max_trials: int = 10  # revert trials after the full int8 one
    search_group: int = 1  # nodes returned to float in the first revert trial, doubled each trial until it fits
    search_examples: int = 512  # validation examples the search scores on (spread over the split)
    # how quantized nodes are ordered: leave-one-out (one quantization per node), sqnr (static only: one pass of
    # ONNX Runtime's qdq_loss_debug), auto (leave-one-out up to LEAVE_ONE_OUT_MAX nodes, else sqnr when static)
    ranking: str = "auto"
    # points the search keeps in reserve below the gate: it fits on the validation split, the gate judges the
    # first evaluation split, and a drop that just fits on one can exceed on the other (MiniLM static: 0.78 vs 1.57)
    search_margin: float = 0.0
    # weights in 7 bits instead of 8: true, false, or None (default) to choose by the build machine's ISA
    # (reduce_range_for)
    reduce_range: bool | None = None
    # fuse LayerNormalization / BiasGelu (ONNX Runtime's transformer optimizer) before quantizing
    fusion: bool = True

    def check(self) -> None:
        if self.method not in METHODS:
            raise VariantError(f"int8: method must be one of {METHODS}, got {self.method!r}")
        if self.calibration not in CALIBRATIONS:
            raise VariantError(f"int8: calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.calibration_examples < 1:
            raise VariantError(f"int8: calibration_examples must be >= 1, got {self.calibration_examples}")
        if self.search_margin < 0:
            raise VariantError(f"int8: search_margin must be >= 0 points, got {self.search_margin}")
        if self.ranking not in RANKINGS:
            raise VariantError(f"int8: ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if self.reduce_range not in (None, True, False):
            raise VariantError(f"int8: reduce_range must be true, false or left out (by the CPU), got "
                               f"{self.reduce_range!r}")
        if self.fusion not in (True, False):
            raise VariantError(f"int8: fusion must be true or false, got {self.fusion!r}")
        if self.max_trials < 1 or self.search_group < 1 or self.search_examples < 1:
            raise VariantError("int8: max_trials, search_group and search_examples must be >= 1, got "
                               f"{self.max_trials}, {self.search_group}, {self.search_examples}")


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def reduce_range_for(isa: dict) -> tuple[bool, str]:
    """(reduce_range, why) for a CPU described by builder.core.machine.cpu_isa.

    ONNX Runtime's U8S8 kernels (uint8 activations x int8 weights, what `int8` writes) on x86 without VNNI multiply
    byte pairs with VPMADDUBSW, whose two-product sums saturate at 16 bits: 255 x 127 x 2 = 64,770 > 32,767. With
    7-bit weights the sum stays within range (255 x 64 x 2 = 32,640). ONNX Runtime's quantizer recommends
    reduce_range=True on x86 without VNNI and False with it (onnxruntime.quantization.quantize_static's docstring).
    Measured on the wide_range fixture (tests/unit/test_compression.py): on an AVX2 machine without VNNI, 8-bit
    weights made the accuracy search return an extra layer to float that a VNNI machine keeps in int8.
    """
    flags = set(isa.get("flags") or ())
    if flags & set(VNNI_FLAGS):
        return False, f"{isa.get('summary')}: VNNI accumulates u8 x s8 in 32 bits, no saturation"
    if flags & {"avx2", "avx512f"}:
        return True, (f"{isa.get('summary')}: without VNNI, u8 x s8 pairs sum in 16 bits and can saturate; 7-bit "
                      "weights cannot")
    return False, f"{isa.get('summary')}: not an x86 AVX2/AVX-512 CPU, whose kernels saturate"


def chosen_reduce_range(setting: bool | None) -> tuple[bool, str, str]:
    """(reduce_range, why, the CPU's ISA summary): the spec's `reduce_range` when set, else by this machine's ISA."""
    isa = cpu_isa()
    if setting is not None:
        return setting, "set in the model spec (variants.int8.reduce_range)", isa["summary"]
    return (*reduce_range_for(isa), isa["summary"])


class SplitReader:
    """ONNX Runtime calibration reader over a cached data split, in batches, padding trimmed."""

    def __init__(self, split, sequence_mask: str | None, batch_size: int = 16):
        self._batches = (inputs for inputs, _ in split.batches(batch_size, sequence_mask))

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader instead
        return self._batches


def apply(onnx_file: pathlib.Path, context, config: Config) -> pathlib.Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    config.check()
    model = onnx.load(str(onnx_file))
    op_types = {n.op_type for n in model.graph.node}
    method = config.method if config.method != "auto" else ("static" if "Conv" in op_types else "dynamic")
    prepared, fused_ops = prepared_for_quantization(onnx_file, context.out, config.fusion)
    nodes = onnx.load(str(prepared)).graph.node
    excluded = excluded_nodes(nodes, config)
    output = context.out / "model.int8.onnx"
    calibration = calibration_examples(context, config) if method == "static" else None

    gemms = {n.name for n in nodes if n.op_type == "Gemm"}
    reduce_range, why, isa = chosen_reduce_range(config.reduce_range)

    def quantize(target: pathlib.Path, excluded_nodes: list[str]) -> pathlib.Path:
        if method == "dynamic":
            dynamic_int8(prepared, target, excluded_nodes, gemms, config.per_channel, reduce_range)
        else:
            reader = SplitReader(calibration, context.spec.sequence_mask)
            method_enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                           "percentile": CalibrationMethod.Percentile}[config.calibration]
            # activations uint8 + weights int8 (U8S8): the fast path of ONNX Runtime's x86 integer kernels
            quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                            per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method_enum, nodes_to_exclude=excluded_nodes,
                            reduce_range=reduce_range,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return target

    budget = getattr(context, "max_accuracy_drop", None)
    if config.accuracy_search and budget is not None:
        output, search_notes = searched(quantize, prepared, excluded, output, context, config,
                                        max(budget - config.search_margin, 0.0))
        excluded = excluded + list(search_notes["reverted"])
        context.notes["int8_search"] = search_notes
    else:
        quantize(output, excluded)
    context.notes.update({"int8_reduce_range": {"reduce_range": reduce_range, "why": why, "cpu": isa},
                          "int8_method": method, "int8_excluded_nodes": excluded,
                          "int8_fusion": {"on": config.fusion, "fused_ops": fused_ops},
                          "int8_per_channel": config.per_channel,
                          "int8_calibration": config.calibration if method == "static" else None})
    prepared.unlink(missing_ok=True)
    return output


def excluded_nodes(nodes, config: Config) -> list[str]:
    """The nodes kept in float by the spec: named ones, whole op types, and with `exclude_last` the last weighted
    node. Raises VariantError for a named node the graph does not have."""
    excluded = [n.name for n in nodes if n.name in config.exclude_nodes or n.op_type in config.exclude_op_types]
    if config.exclude_last:
        weighted = [n.name for n in nodes if n.op_type in WEIGHTED_OPS]
        if weighted and weighted[-1] not in excluded:
            excluded.append(weighted[-1])
    unknown = sorted(set(config.exclude_nodes) - {n.name for n in nodes})
    if unknown:
        raise VariantError(f"int8: exclude_nodes names nodes the graph does not have: {unknown}",
                           hint="node names are those of the ONNX graph after quant_pre_process")
    return excluded


def calibration_examples(context, config: Config):
    """int8-static's calibration examples, spread over the spec's calibration split. Raises VariantError."""
    split = context.splits.get(context.spec.calibration_split)
    if split is None or len(split) == 0:
        raise VariantError(f"int8-static needs calibration data: split `{context.spec.calibration_split}` is "
                           "missing or empty", hint="set calibration_split in the model spec")
    return split.spread(config.calibration_examples)


def prepared_for_quantization(onnx_file: pathlib.Path, out: pathlib.Path, fusion: bool) -> tuple[pathlib.Path, dict]:
    """`out`/int8_prepared.onnx: `onnx_file` fused (with `fusion`, fused_transformer) then through
    quant_pre_process; returns it and {fused op: count}."""
    import contextlib

    from onnxruntime.quantization import quant_pre_process

    prepared = (out / "int8_prepared.onnx").resolve()
    source, fused_ops = onnx_file.resolve(), {}
    # quant_pre_process writes scratch files into the working directory: keep them in the variant's folder
    with contextlib.chdir(out):
        if fusion:
            source, fused_ops = fused_transformer(source, (out / "int8_fused.onnx").resolve())
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference cannot follow every exporter graph; ONNX shape inference can
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    for scratch in [*out.glob("*.data"), out / "sym_shape_infer_temp.onnx", out / "int8_fused.onnx"]:
        scratch.unlink(missing_ok=True)
    return prepared, fused_ops


def dynamic_int8(prepared: pathlib.Path, target: pathlib.Path, excluded: list[str], gemms: set[str],
                 per_channel: bool, reduce_range: bool) -> None:
    """The one quantize_dynamic call: int8 weights for MatMul and Gemm, `excluded` nodes left in float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # dynamic quantization first rewrites each Gemm as `<name>_MatMul` + Add and then matches the exclusions
    # against the new names: name both, or an excluded Gemm is quantized anyway
    quantize_dynamic(str(prepared), str(target), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=[*excluded, *(f"{n}_MatMul" for n in excluded if n in gemms)],
                     reduce_range=reduce_range)


def requantized(float_file: pathlib.Path, out: pathlib.Path, notes: dict, fusion: bool) -> pathlib.Path:
    """A dynamic int8 variant quantized again from its float file as its record `notes` say (excluded nodes, weight
    bits), with or without fusion: the benchmark's twin of a built variant (builder.speedbench --fusion)."""
    import onnx

    if notes.get("int8_method") != "dynamic":
        raise VariantError(f"int8: only a dynamic int8 variant can be quantized again here, this one is "
                           f"{notes.get('int8_method')!r}")
    out.mkdir(parents=True, exist_ok=True)
    prepared, _ = prepared_for_quantization(float_file, out, fusion)
    gemms = {n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Gemm"}
    target = out / ("model.int8.fused.onnx" if fusion else "model.int8.unfused.onnx")
    dynamic_int8(prepared, target, list(notes.get("int8_excluded_nodes") or []), gemms,
                 notes.get("int8_per_channel", True), bool((notes.get("int8_reduce_range") or {}).get("reduce_range")))
    prepared.unlink(missing_ok=True)
    return target


def fused_transformer(source: pathlib.Path, target: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """`source` through ONNX Runtime's transformer optimizer (BERT rules, heads and width read off the graph),
    written to `target`; returns the file to quantize and {fused op: count}. A graph in which nothing fuses is
    returned as it is, with {}."""
    import collections
    import contextlib
    import io
    import logging

    import onnx
    from onnxruntime.transformers import optimizer

    # the optimizer warns per pattern it does not find and prints when symbolic shape inference gives up
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimizer.optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0,
                                                 opt_level=1, use_gpu=False)
    finally:
        logging.disable(logging.NOTSET)
    before = collections.Counter(n.op_type for n in onnx.load(str(source), load_external_data=False).graph.node)
    # the statistics count every node of a fusable type, those the exporter already wrote included
    fused = {op: n - before[op] for op, n in optimized.get_fused_operator_statistics().items() if n > before[op]}
    if not fused:
        return source, {}
    optimized.save_model_to_file(str(target))
    return target, fused


def quantized_nodes(prepared, quantized) -> list[str]:
    """Names of the prepared graph's nodes that quantization changed: replaced by an integer op (dynamic: the node
    is gone under its name) or fed through a DequantizeLinear (static QDQ)."""
    kept = {n.name: n for n in quantized.graph.node}
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    found = []
    for node in prepared.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.name not in kept or any(i in dequantized for i in kept[node.name].input):
            found.append(node.name)
    return found


def searched(quantize, prepared: pathlib.Path, excluded: list[str], output: pathlib.Path, context, config: Config,
             budget: float) -> tuple[pathlib.Path, dict]:
    """Quantize with the accuracy search of int8_search against fp32 on the validation split; the chosen model is
    moved to `output`. Returns it and the record's notes."""
    import shutil

    import onnx

    spec = context.spec
    split = context.splits[spec.validation_split].spread(config.search_examples)
    metric = spec.metric

    def outputs_of(path) -> np.ndarray:
        return outputs_on(onnx_predictor(onnx_session(path)), spec, split)[metric.output]
    floating = outputs_of(prepared)
    fp32_file = context.workdir / "fp32" / "model.onnx"
    reference = score(metric, {metric.output: outputs_of(fp32_file) if fp32_file.is_file() else floating}, split.labels)
    float_drop = round((reference - score(metric, {metric.output: floating}, split.labels)) * 100, 2)
    if float_drop > budget:  # e.g. a distilled student already below the gate: no float node could win it back
        context.progress(f"int8 search: skipped, the float model before int8 already drops {float_drop:.2f} points "
                         f"vs fp32 on `{spec.validation_split}` (budget {budget})")
        return quantize(output, excluded), {
            "split": spec.validation_split, "examples": len(split), "budget_points": budget, "fp32_accuracy": reference,
            "skipped": f"the float model already drops {float_drop} points", "reverted": [], "trials": []}
    scratch = context.out / "int8_search"
    scratch.mkdir(exist_ok=True)
    counter = iter(range(10**6))

    def quantize_reverting(reverted: list[str]) -> pathlib.Path:
        return quantize(scratch / f"q{next(counter)}.onnx", excluded + list(reverted))

    def evaluate(path) -> int8_search.Score:
        out = outputs_of(path)
        return int8_search.Score(score(metric, {metric.output: out}, split.labels),
                                 int8_search.output_error(out, floating))

    batch1 = fixed_batch(spec, split, 1)
    full = quantize_reverting([])
    candidates = quantized_nodes(onnx.load(str(prepared)), onnx.load(str(full)))
    static = any(n.op_type == "DequantizeLinear" for n in onnx.load(str(full)).graph.node)
    ranking_method = ranking_method_of(config.ranking, static, len(candidates))

    def rank_sqnr(full_path: pathlib.Path):
        context.progress(f"int8 search: ranking {len(candidates)} nodes by quantization SQNR (qdq_loss_debug, "
                         f"{SQNR_EXAMPLES} examples)")
        return int8_search.rank_by_sqnr(node_tensors(onnx.load(str(prepared)), candidates),
                                        activation_sqnr(full_path, split.spread(SQNR_EXAMPLES), spec, scratch))

    chosen, trials, ranking = int8_search.search(
        candidates, quantize_reverting, evaluate, lambda path: latency_p50_ms(path, batch1, 1), reference,
        budget, config.max_trials, config.search_group, context.progress,
        rank=rank_sqnr if ranking_method == "sqnr" else None)
    shutil.move(str(chosen), str(output))
    shutil.rmtree(scratch)
    notes = search_notes(trials, ranking, ranking_method, budget, len(candidates))
    if len(trials) > 1:
        for line in ["int8 search (validation split, drop vs fp32 in points):", *notes["table"]]:
            context.progress(line)
    return output, {"split": spec.validation_split, "examples": len(split), "budget_points": budget,
                    "fp32_accuracy": reference, "float_drop_points": float_drop, **notes}


def ranking_method_of(asked: str, static: bool, candidates: int) -> str:
    """`sqnr` or `leave-one-out`: `auto` ranks a large static graph by SQNR, anything else one node at a time."""
    if asked == "auto":
        return "sqnr" if static and candidates > LEAVE_ONE_OUT_MAX else "leave-one-out"
    if asked == "sqnr" and not static:
        raise VariantError("int8: ranking `sqnr` needs a static (QDQ) graph; dynamic quantization has no "
                           "activations to compare", hint="use ranking: leave-one-out, or method: static")
    return asked


def search_notes(trials: list, ranking: list, ranking_method: str, budget: float, candidates: int) -> dict:
    """The record's notes of a finished search: its trials, what it reverted to float, and the tuning table."""
    last = int8_search.chosen_trial(trials, budget)
    return {
        "quantized_nodes": candidates, "within_budget": last.drop_points <= budget,
        "reverted": list(last.reverted),
        "trials": [{"trial": t.number, "reverted": len(t.reverted), "new": [n for n in t.reverted
                    if n not in (trials[i - 1].reverted if i else ())], "accuracy": t.accuracy,
                    "drop_points": t.drop_points, "b1_ms": t.b1_ms} for i, t in enumerate(trials)],
        "ranking_method": ranking_method if len(trials) > 1 else None,
        "ranking": [{"node": n, **figures} for n, figures in ranking],
        "speed_cost_b1": round(last.b1_ms / trials[0].b1_ms, 3) if trials[0].b1_ms else None,
        "table": int8_search.tuning_table(trials, candidates),
    }


def node_tensors(prepared, names: list[str]) -> dict[str, list[str]]:
    """Each named node's input and output tensor names."""
    wanted = set(names)
    return {n.name: [*n.input, *n.output] for n in prepared.graph.node if n.name in wanted}


def activation_sqnr(qdq_file: pathlib.Path, split, spec, scratch: pathlib.Path) -> dict[str, float]:
    """SQNR (dB) of every quantized activation of a QDQ model: the tensor before its QuantizeLinear against the
    value after its DequantizeLinear, over `split` (ONNX Runtime's qdq_loss_debug)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented = scratch / "sqnr_augmented.onnx"
    modify_model_output_intermediate_tensors(str(qdq_file), str(augmented))
    # one example at a time: trimmed sequences differ in length, and the pass keeps every activation
    activations = collect_activations(str(augmented), SplitReader(split, spec.sequence_mask, batch_size=1))
    matching = create_activation_matching(activations)
    augmented.unlink(missing_ok=True)
    return {name: compute_signal_to_quantization_noice_ratio(m["pre_qdq"], m["post_qdq"])
            for name, m in matching.items() if m.get("pre_qdq") is not None and m.get("post_qdq") is not None}
