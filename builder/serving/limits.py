"""What a served model's inputs must respect, derived at build time and checked by the embedded backend.

The limits go into config.pbtxt as one parameter, `input_limits`, a JSON string (tritonconfig.build_config):

    {"inputs": {"input_ids": {"min": 0, "max": 30521, "why": "the vocabulary has 30522 tokens"},
                "attention_mask": {"min": 0, "max": 1, "nonzero_rows": true, "why": "..."},
                "image": {"finite": true, "min": 0, "max": 255, "why": "..."}},
     "dims": {"seq": {"min": 1, "max": 512, "axes": [["input_ids", 1], ["attention_mask", 1]], "why": "..."}}}

Where each limit comes from:
- Token ids: an integer input that indexes a table (an ONNX Gather whose indices are the input, through shape-only
  ops, and whose data is a weight) must lie in 0..rows-1. ONNX Runtime fails on ids >= rows, and counts negative
  ids from the end of the table: -5 gives a normal-looking answer. The table is read from the served ONNX file.
- Dynamic axes (`seq`): at least 1 (the export's Dim minimum: an empty sequence has nothing to pool, and a model
  answers it with made-up numbers) and at most the longest size the served ONNX file runs, found by running it
  (binary search up to torch2onnx.MAX_DYNAMIC_SIZE, the export's Dim maximum; MiniLM: 512, its position table).
  Inputs that share an axis name must agree on its size: a mask shaped like its ids.
- The spec's `sequence_mask`: 0/1, and no example may be all zeros (it would attend to nothing).
- Floats: finite unless the spec's input says `finite: false` (a NaN or inf pixel flows through every layer into
  NaN logits, whose argmax is a made-up class; no kit model treats NaN as "missing"). A spec input may declare
  `range: [min, max]` (digits: 0..255 pixel intensities), intersected with what the model implies.

The official image's native ONNX Runtime backend ignores the parameter (it reads model parameters by key name:
onnxruntime_backend src/onnxruntime.cc, ModelState::ModelState), so the checks run on the embedded server only.
"""

from __future__ import annotations

import json
import pathlib

from ..core.errors import ExportError
from ..core.spec import MAX_DYNAMIC_SIZE

PARAMETER = "input_limits"
# ops between an input and the Gather it indexes that move or retype values without changing them
PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
# ops between a weight and a Gather's data input: the table keeps its rows
WEIGHT_OPS = {"Cast", "DequantizeLinear", "Identity"}


def derive_limits(spec, onnx_path: pathlib.Path) -> dict:
    """The input limits of `spec` served as the ONNX file `onnx_path` (the dict above). Raises ExportError if the
    model does not run at the export example's sizes."""
    import onnx

    model = onnx.load(str(onnx_path))
    inputs = {}
    for t in spec.inputs:
        limit = {}
        if t.dtype.startswith("float"):
            limit["finite"] = t.finite
        if not t.dtype.startswith("float") and t.dtype != "bool":
            rows = indexed_rows(model.graph, t.name)
            if rows:
                limit.update(min=0, max=rows - 1, why=f"the model's token table has {rows} rows")
        if t.name == spec.sequence_mask:
            limit.update(min=max(limit.get("min", 0), 0), max=min(limit.get("max", 1), 1), nonzero_rows=True,
                         why="an attention mask: 1 for a token, 0 for padding, at least one 1 per example")
        if t.range is not None:
            low, high = t.range
            limit["min"] = max(limit.get("min", low), low)
            limit["max"] = min(limit.get("max", high), high)
            limit["why"] = "; ".join(filter(None, [limit.get("why"), f"the spec declares {low}..{high}"]))
        inputs[t.name] = limit
    dims = {}
    for t in spec.inputs:
        for axis, name in t.dynamic_dims.items():
            if name != "batch":
                dims.setdefault(name, {"min": 1, "axes": []})["axes"].append([t.name, axis])
    if dims:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # the failing probes are expected: keep their errors out of the build output
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        for name, dim in dims.items():
            dim["max"] = longest_size(session, spec, name, inputs)
            dim["why"] = ("the longest the exported model runs" if dim["max"] < MAX_DYNAMIC_SIZE
                          else "the export's limit for dynamic axes")
    return {"inputs": inputs, "dims": dims}


def indexed_rows(graph, name: str) -> int | None:
    """Rows of the smallest weight table that input `name` indexes (Gather on axis 0), or None if none."""
    weights = {i.name: list(i.dims) for i in graph.initializer}
    weights |= {n.output[0]: list(a.t.dims) for n in graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"}
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i, value in enumerate(n.input):
            consumers.setdefault(value, []).append((n, i))

    def table_rows(value: str) -> int | None:
        while value not in weights and value in producers and producers[value].op_type in WEIGHT_OPS:
            value = producers[value].input[0]
        return weights[value][0] if weights.get(value) else None

    found, frontier, seen = [], [name], set()
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        for node, index in consumers.get(value, []):
            if node.op_type in PASSTHROUGH and index == 0:
                frontier.extend(node.output)
            elif node.op_type == "Gather" and index == 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                rows = table_rows(node.input[0]) if axis == 0 else None
                if rows:
                    found.append(rows)
    return min(found) if found else None


def longest_size(session, spec, dim: str, inputs: dict) -> int:
    """The largest size of axis `dim` (up to MAX_DYNAMIC_SIZE) at which the model runs on valid inputs: zeros
    (in range for ids and pixels alike), ones for the mask. Binary search: it runs at 1, and a model that fails
    at a size fails at every larger one (a position table)."""
    import numpy as np

    def runs(size: int) -> bool:
        feeds = {}
        for t in spec.inputs:
            shape = [size if d == dim else s for d, s in zip(t.shape, spec.example_shape(t))]
            low = inputs[t.name].get("min", 0)
            value = 1 if t.name == spec.sequence_mask else max(low, 0)
            feeds[t.name] = np.full(shape, value, dtype=t.dtype)
        try:
            session.run(None, feeds)
        except Exception:  # ONNX Runtime raises its own Fail/InvalidArgument/RuntimeException types
            return False
        return True

    if not runs(1):
        raise ExportError(f"{spec.name}: the exported model does not run with `{dim}` of size 1",
                          hint="every dynamic axis is exported with a minimum of 1; check the model's forward")
    if runs(MAX_DYNAMIC_SIZE):
        return MAX_DYNAMIC_SIZE
    good, bad = 1, MAX_DYNAMIC_SIZE
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if runs(middle) else (good, middle)
    return good


def to_parameter(limits: dict) -> dict:
    """The config.pbtxt `parameters` entry that carries `limits`."""
    return {PARAMETER: {"string_value": json.dumps(limits, sort_keys=True, separators=(",", ":"))}}
