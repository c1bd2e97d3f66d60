"""torch -> ONNX: one self-contained file that ONNX Runtime 1.19 (Triton 24.10) loads, checked against PyTorch."""

from __future__ import annotations

import pathlib

import numpy as np

from ..core.errors import ExportError
from ..core.spec import MAX_DYNAMIC_SIZE

OPSET = 18  # torch's exporter's own; <= 21 for ONNX Runtime 1.19
MAX_OPSET = 21
MAX_IR_VERSION = 10  # ONNX Runtime 1.19 reads IR <= 10
RTOL, ATOL = 1e-3, 1e-4  # ONNX Runtime vs PyTorch, fp32 (kernel and fusion order differ; argmax does not)


def example_batch(spec, batch: int = 2) -> dict:
    """Export example: batch and dynamic axes > 1 so the exporter keeps them symbolic."""
    return {t.name: np.ones(spec.example_shape(t, batch), dtype=t.dtype) for t in spec.inputs}


def export(model, spec, example: dict, path: pathlib.Path) -> None:
    """Export `model` (eval mode, forward(**inputs) -> tensor or tuple in the order of spec.outputs) to `path`.

    `example` maps input names to numpy arrays; its non-batch dynamic axes must be > 1 so the exporter does not
    specialise them. Raises ExportError when export fails or the file breaks the ONNX Runtime 1.19 limits.
    """
    import logging
    import warnings

    import onnx
    import torch

    # The exporter warns about torchvision ops it cannot register (torchvision is not installed) on every call.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    inputs = {t.name: torch.from_numpy(example[t.name]) for t in spec.inputs}
    batch = torch.export.Dim("batch", min=1, max=max(spec.max_batch_size, 2) * 1024)
    dims = {}
    dynamic_shapes = {}
    for t in spec.inputs:
        axes = {}
        for axis, name in t.dynamic_dims.items():
            axes[axis] = batch if name == "batch" else dims.setdefault(name, torch.export.Dim(name, min=1, max=MAX_DYNAMIC_SIZE))
        dynamic_shapes[t.name] = axes
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations, nothing the user can act on
            warnings.filterwarnings("ignore", message="# The axis name")  # our Dim names are reused on purpose
            program = torch.onnx.export(model.eval(), args=(), kwargs=inputs, dynamic_shapes=dynamic_shapes,
                                        input_names=[t.name for t in spec.inputs],
                                        opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"{spec.name}: torch.onnx.export failed: {str(e).splitlines()[0]}",
                          hint="the model must be traceable by torch.export; run with --verbose for the traceback") from e
    proto = program.model_proto
    if len(proto.graph.output) != len(spec.outputs):
        raise ExportError(f"{spec.name}: the model returns {len(proto.graph.output)} outputs, the spec declares {len(spec.outputs)}",
                          hint="forward must return one tensor or a tuple in the order of `outputs`")
    name_outputs(proto.graph, [t.name for t in spec.outputs])
    enforce_limits(proto, spec.name)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def enforce_limits(proto, what: str) -> None:
    """Opset <= 21 and IR <= 10, what ONNX Runtime 1.19 (Triton 24.10) reads. Lowers the IR version in place when
    the opset allows it; raises ExportError when the opset is too new."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > MAX_OPSET:
        raise ExportError(f"{what}: opset {opset} is above {MAX_OPSET}, which ONNX Runtime 1.19 (Triton 24.10) cannot run")
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION  # IR 10 covers every opset up to 21: nothing in the graph needs IR 11


def check_limits(path: pathlib.Path) -> None:
    """enforce_limits on a file written by another tool (ONNX Runtime's quantizer, the float16 converter)."""
    import onnx

    proto = onnx.load(str(path))
    before = proto.ir_version
    enforce_limits(proto, path.name)
    if proto.ir_version != before:
        onnx.save_model(proto, str(path))


def verify(model, spec, onnx_path: pathlib.Path, batch: dict, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Run `batch` through PyTorch and ONNX Runtime; return the largest absolute difference over all outputs.

    Raises ExportError if any output differs beyond rtol/atol.
    """
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run([t.name for t in spec.outputs], batch)
    worst = 0.0
    for t, want, got in zip(spec.outputs, expected, actual):
        want = want.numpy()
        if want.shape != got.shape:
            raise ExportError(f"{spec.name}: output `{t.name}` has shape {got.shape} in ONNX Runtime, {want.shape} in PyTorch")
        diff = float(np.max(np.abs(want - got))) if want.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(got, want, rtol=rtol, atol=atol):
            raise ExportError(f"{spec.name}: ONNX Runtime and PyTorch disagree on `{t.name}` (max abs diff {diff:.3g}, "
                              f"tolerance rtol={rtol} atol={atol})",
                              hint="an op may export differently from eager mode (randomness, data-dependent control flow)")
    return worst


def name_outputs(graph, names: list[str]) -> None:
    """Give the graph outputs their served names. The exporter's own output_names can collide with an internal
    value of the same name (BERT's `embedding` Gather), which breaks SSA; rename any such value out of the way."""
    renames = {}
    for output, name in zip(graph.output, names):
        if output.name != name:
            renames[name] = f"{name}__internal"  # applied first: frees the name
    for output, name in zip(graph.output, names):
        renames.setdefault(output.name, name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = renames.get(value.name, value.name)
