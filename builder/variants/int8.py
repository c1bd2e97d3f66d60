"""`int8`, `int8-dynamic`, `int8-static`: ONNX Runtime quantization to signed 8-bit weights.

`dynamic` quantizes weights ahead of time (per channel) and activations on the fly: right for transformer-style
models, whose activation ranges vary by input. `static` writes a QDQ model whose activation scales come from a
calibration pass over real examples (MinMax, Entropy or Percentile): right for CNNs. `int8` (method auto) picks
static when the graph has convolutions and dynamic otherwise. quant_pre_process (shape inference + ORT graph
optimisation) runs first, as ONNX Runtime recommends. Nodes listed in `exclude_nodes`, of an op type in
`exclude_op_types`, or (with `exclude_last`) the last MatMul/Gemm/Conv - the classifier, whose errors flip
predictions directly - stay in float; the record lists them.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from ..core.errors import VariantError

STAGE = "onnx"
METHODS = ("auto", "dynamic", "static")
CALIBRATIONS = ("minmax", "entropy", "percentile")
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

    def check(self) -> None:
        if self.method not in METHODS:
            raise VariantError(f"int8: method must be one of {METHODS}, got {self.method!r}")
        if self.calibration not in CALIBRATIONS:
            raise VariantError(f"int8: calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.calibration_examples < 1:
            raise VariantError(f"int8: calibration_examples must be >= 1, got {self.calibration_examples}")


class SplitReader:
    """ONNX Runtime calibration reader over a cached data split, in batches, padding trimmed."""

    def __init__(self, split, sequence_mask: str | None, batch_size: int = 16):
        self._batches = (inputs for inputs, _ in split.batches(batch_size, sequence_mask))

    def get_next(self):
        return next(self._batches, None)


def apply(onnx_file: pathlib.Path, context, config: Config) -> pathlib.Path:
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    config.check()
    model = onnx.load(str(onnx_file))
    op_types = {n.op_type for n in model.graph.node}
    method = config.method if config.method != "auto" else ("static" if "Conv" in op_types else "dynamic")
    import contextlib

    prepared = (context.out / "int8_prepared.onnx").resolve()
    source = onnx_file.resolve()
    # quant_pre_process writes scratch files into the working directory: keep them in the variant's folder
    with contextlib.chdir(context.out):
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference cannot follow every exporter graph; ONNX shape inference can
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    for scratch in [*context.out.glob("*.data"), context.out / "sym_shape_infer_temp.onnx"]:
        scratch.unlink(missing_ok=True)
    nodes = onnx.load(str(prepared)).graph.node
    excluded = [n.name for n in nodes if n.name in config.exclude_nodes or n.op_type in config.exclude_op_types]
    if config.exclude_last:
        weighted = [n.name for n in nodes if n.op_type in WEIGHTED_OPS]
        if weighted and weighted[-1] not in excluded:
            excluded.append(weighted[-1])
    unknown = sorted(set(config.exclude_nodes) - {n.name for n in nodes})
    if unknown:
        raise VariantError(f"int8: exclude_nodes names nodes the graph does not have: {unknown}",
                           hint="node names are those of the ONNX graph after quant_pre_process")
    output = context.out / "model.int8.onnx"
    if method == "dynamic":
        quantize_dynamic(str(prepared), str(output), per_channel=config.per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=excluded)
    else:
        split = context.splits.get(context.spec.calibration_split)
        if split is None or len(split) == 0:
            raise VariantError(f"int8-static needs calibration data: split `{context.spec.calibration_split}` is "
                               "missing or empty", hint="set calibration_split in the model spec")
        reader = SplitReader(split.spread(config.calibration_examples), context.spec.sequence_mask)
        method_enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}[config.calibration]
        # activations uint8 + weights int8 (U8S8): the fast path of ONNX Runtime's x86 integer kernels
        quantize_static(str(prepared), str(output), reader, quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method_enum, nodes_to_exclude=excluded,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    context.notes.update({"int8_method": method, "int8_excluded_nodes": excluded,
                          "int8_calibration": config.calibration if method == "static" else None})
    prepared.unlink(missing_ok=True)
    return output
