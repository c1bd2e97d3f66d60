"""The kit's Python-based Triton backend `onnxruntime`: serves `<version>/model.onnx` with ONNX Runtime on CPU.

On the official image the native C++ ONNX Runtime backend answers to the same name, so one repository serves on
both. This backend therefore reads the native backend's config parameters with the same meaning:
`intra_op_thread_count`, `inter_op_thread_count`, `execution_mode`, `enable_mem_arena`, `enable_mem_pattern` and
`optimization { graph { level } }` (-1 basic, 1 extended, 2 none; unset or 0: all). Anything it cannot honour
(GPU instances, execution accelerators such as TensorRT, other parameters) is logged at load as one warning, by the
model's first instance only, to Triton's log; it runs on the ONNX Runtime CPU provider.

Triton itself refuses a KIND_GPU instance group on a machine without GPUs ("has kind KIND_GPU but no GPUs are
available"). The embedded server (builder/serving/server.py) then loads such a model again with KIND_CPU instances and the
parameter `embedded_cpu_fallback` (never written to a config.pbtxt), which this backend reports in that warning.

Inputs are checked before ONNX Runtime runs, against the parameter `input_limits` that the builder derives from
the model and writes (builder/serving/limits.py: token ids within the vocabulary and >= 0, sequence lengths 1..the longest
the model runs, a mask shaped like its ids with at least one 1 per example, finite floats, declared ranges). The
checks are prepared once in initialize(); per request they cost one min and one max per checked input. A request
that fails them gets an INVALID_ARG error (HTTP 400, gRPC INVALID_ARGUMENT) naming the input, the bad value and
where it is, and the allowed range; it never reaches ONNX Runtime, which would answer out-of-range ids with a 500
and negative ids, empty sequences and all-zero masks with made-up numbers. The official image's native backend
ignores the parameter.

ONNX Runtime's intra-op threads spin while they wait for work (`session.intra_op.allow_spinning`, on by default).
On a CPU machine shared by the server, its stubs and the clients, a spinning thread takes a core from the others,
so this backend turns spinning off unless the server's environment sets KIT_ORT_ALLOW_SPINNING=1 (the bench's
before/after, docs/load-tests.md). The native backend has no config parameter for it, so it is not one here
either: a config.pbtxt means the same on both servers.

Dynamic batching hands `execute()` several requests: those whose inputs have the same non-batch shape are
concatenated into one ONNX Runtime run and the outputs split back; requests of another shape (text of another
length) run as their own group. If a group's run fails, its requests are retried one by one so that one bad
request gets an error and the others still get answers. ONNX Runtime's own InvalidArgument (the request's fault:
e.g. an id beyond a table the limits do not know of) is answered as INVALID_ARG, anything else as INTERNAL.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

LIMITS_PARAMETER = "input_limits"  # JSON, written by builder/serving/limits.py
SUPPORTED_PARAMETERS = {"intra_op_thread_count", "inter_op_thread_count", "execution_mode",
                        "enable_mem_arena", "enable_mem_pattern", LIMITS_PARAMETER}
SPINNING_ENV = "KIT_ORT_ALLOW_SPINNING"  # "1": let intra-op threads spin (ONNX Runtime's default); else off
FALLBACK_PARAMETER = "embedded_cpu_fallback"  # set by builder/serving/server.py only: what was asked for instead of CPU
GRAPH_LEVELS = {  # the native backend's meaning of optimization.graph.level
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
NUMPY_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
                "TYPE_INT8": np.int8, "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_}


def session_options(config: dict) -> tuple:
    """ONNX Runtime session options from a Triton model config, and warnings for what is not honoured."""
    options = ort.SessionOptions()
    warnings = []
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if FALLBACK_PARAMETER in parameters:
        warnings.append(f"{parameters[FALLBACK_PARAMETER]}; the embedded server loaded it with KIND_CPU instances")
    for key in sorted(set(parameters) - SUPPORTED_PARAMETERS - {FALLBACK_PARAMETER}):
        warnings.append(f"parameter `{key}` is not supported by the embedded onnxruntime backend and is ignored")
    try:
        if "intra_op_thread_count" in parameters:
            options.intra_op_num_threads = int(parameters["intra_op_thread_count"])
        if "inter_op_thread_count" in parameters:
            options.inter_op_num_threads = int(parameters["inter_op_thread_count"])
        if "execution_mode" in parameters:
            options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if int(parameters["execution_mode"]) == 1
                                      else ort.ExecutionMode.ORT_SEQUENTIAL)
        if "enable_mem_arena" in parameters:
            options.enable_cpu_mem_arena = parameters["enable_mem_arena"].lower() in ("1", "true")
        if "enable_mem_pattern" in parameters:
            options.enable_mem_pattern = parameters["enable_mem_pattern"].lower() in ("1", "true")
    except ValueError as e:
        raise pb_utils.TritonModelException(f"{config['name']}: bad value in config parameters: {e}")
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if os.environ.get(SPINNING_ENV) == "1" else "0")
    optimization = config.get("optimization", {})
    level = int(optimization.get("graph", {}).get("level", 0))
    if level not in GRAPH_LEVELS:
        warnings.append(f"optimization.graph.level {level} is unknown (use -1, 0, 1 or 2); using all optimizations")
    options.graph_optimization_level = GRAPH_LEVELS.get(level, GRAPH_LEVELS[0])
    accelerators = optimization.get("execution_accelerators", {})
    for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
        for accelerator in accelerators.get(kind, []):
            warnings.append(f"{kind} `{accelerator.get('name')}` is not supported by the embedded backend "
                            "(CPU only) and is ignored")
    for group in config.get("instance_group", []):
        if group.get("kind") not in (None, "KIND_CPU", "KIND_AUTO"):
            warnings.append(f"instance_group kind {group.get('kind')} is not supported by the embedded backend "
                            "(CPU only)")
    return options, warnings


class InputChecks:
    """The checks of an `input_limits` parameter (builder/serving/limits.py), prepared once for a model whose inputs are
    `input_names` in this order. `problem(arrays)` -> None, or one line: what is wrong, where, what is allowed."""

    def __init__(self, limits: dict, input_names: list):
        position = {name: i for i, name in enumerate(input_names)}
        unknown = (set(limits.get("inputs", {})) | {n for d in limits.get("dims", {}).values() for n, _ in d["axes"]}) \
            - set(position)
        if unknown:
            raise ValueError(f"input_limits names inputs {sorted(unknown)} the model does not have")
        self.dims = [(dim, d["min"], d["max"], [(position[n], n, axis) for n, axis in d["axes"]], d.get("why", ""))
                     for dim, d in limits.get("dims", {}).items()]
        self.values = [(position[name], name, v.get("min"), v.get("max"), bool(v.get("finite")),
                        bool(v.get("nonzero_rows")), v.get("why", ""))
                       for name, v in limits.get("inputs", {}).items()
                       if v.get("min") is not None or v.get("max") is not None or v.get("finite")
                       or v.get("nonzero_rows")]

    def problem(self, arrays: list):
        for dim, low, high, axes, why in self.dims:
            first, name, axis = axes[0]
            size = arrays[first].shape[axis]
            for other, other_name, other_axis in axes[1:]:
                if arrays[other].shape[other_axis] != size:
                    return (f"input `{other_name}` has shape {list(arrays[other].shape)} but `{name}` has "
                            f"{list(arrays[first].shape)}: they must match in `{dim}` (axis {axis})")
            if not low <= size <= high:
                return (f"input `{name}`: `{dim}` (axis {axis}) is {size}, allowed {low}..{high}"
                        + (f" ({why})" if why else ""))
        for index, name, low, high, finite, nonzero_rows, why in self.values:
            array = arrays[index]
            if array.size == 0:
                continue
            smallest, largest = array.min(), array.max()  # NaN propagates into both, inf shows in one
            allowed = f"{low}..{high}" if low is not None or high is not None else ""
            if finite and not (np.isfinite(smallest) and np.isfinite(largest)):
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                return (f"input `{name}`: {array[where].item()} at {list(where)} is not a finite number; send "
                        f"finite values" + (f" in {allowed}" if allowed else ""))
            if (low is not None and smallest < low) or (high is not None and largest > high):
                outside = (array < low) if low is not None else np.zeros(array.shape, bool)
                if high is not None:
                    outside |= array > high
                where = tuple(int(i) for i in np.argwhere(outside)[0])
                return (f"input `{name}`: {array[where].item()} at {list(where)} is outside the allowed {allowed}"
                        + (f" ({why})" if why else ""))
            if nonzero_rows:
                empty = ~array.reshape(len(array), -1).any(axis=1)
                if empty.any():
                    return (f"input `{name}`: example {int(np.argmax(empty))} of the batch is all zeros"
                            + (f" ({why})" if why else ""))
        return None


def first_instance(args, config) -> bool:
    """Whether this is the model's first instance (Triton names instances `<group name>_<index>`)."""
    groups = config.get("instance_group") or [{}]
    return args.get("model_instance_name") == f"{groups[0].get('name', config['name'])}_0"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config["name"]
        path = os.path.join(args["model_repository"], args["model_version"],
                            config.get("default_model_filename") or "model.onnx")
        options, warnings = session_options(config)
        if warnings and first_instance(args, config):  # once per model, not once per instance
            pb_utils.Logger.log_warn(f"{name}: NOT SERVED AS CONFIGURED - the embedded onnxruntime backend "
                                     "RUNS ON CPU ONLY: " + "; ".join(warnings))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{name}: model file {path} is missing; rebuild it with `builder build`")
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph/... types
            raise pb_utils.TritonModelException(
                f"{name}: ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}; rebuild it with `builder build`")
        declared = [i["name"] for i in config["input"]]
        in_file = [i.name for i in self.session.get_inputs()]
        if sorted(declared) != sorted(in_file):
            raise pb_utils.TritonModelException(
                f"{name}: config.pbtxt declares inputs {declared} but model.onnx has {in_file}; rebuild the model")
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [o["name"] for o in config["output"] if o["name"] not in outputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"{name}: config.pbtxt declares outputs {missing} that model.onnx does not have (it has {outputs})")
        self.input_names = declared
        limits = config.get("parameters", {}).get(LIMITS_PARAMETER, {}).get("string_value")
        try:
            self.checks = InputChecks(json.loads(limits), declared) if limits else None
        except (ValueError, KeyError, TypeError) as e:
            raise pb_utils.TritonModelException(f"{name}: bad parameter `{LIMITS_PARAMETER}` in config.pbtxt: {e}; "
                                                "rebuild the model with `builder build`")
        if self.checks is None and first_instance(args, config):
            pb_utils.Logger.log_warn(f"{name}: config.pbtxt has no `{LIMITS_PARAMETER}` (built by an older kit): its "
                                     "inputs are not checked; rebuild it with `builder build`")
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = [NUMPY_DTYPES.get(o["data_type"]) for o in config["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # non-batch shapes of all inputs -> [(request index, arrays)]
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names]
            if any(a is None for a in arrays):
                missing = [n for n, a in zip(self.input_names, arrays) if a is None]
                responses[index] = error_response(f"missing input(s) {missing}; the model takes {self.input_names}",
                                                  pb_utils.TritonError.INVALID_ARG)
                continue
            arrays = [a.as_numpy() for a in arrays]
            problem = self.checks.problem(arrays) if self.checks is not None else None
            if problem is not None:  # this request alone: the others still run
                responses[index] = error_response(problem, pb_utils.TritonError.INVALID_ARG)
                continue
            groups.setdefault(tuple(a.shape[1:] for a in arrays), []).append((index, arrays))
        for members in groups.values():
            self.run_group(members, responses)
        return responses

    def run_group(self, members, responses):
        if len(members) == 1:
            feeds = dict(zip(self.input_names, members[0][1]))
        else:
            feeds = {name: np.concatenate([arrays[k] for _, arrays in members])
                     for k, name in enumerate(self.input_names)}
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as e:
            if len(members) > 1:  # find the culprit: every other request still gets its answer
                for member in members:
                    self.run_group([member], responses)
            else:
                code = pb_utils.TritonError.INVALID_ARG if isinstance(e, InvalidArgument) else pb_utils.TritonError.INTERNAL
                responses[members[0][0]] = error_response(
                    f"ONNX Runtime failed on this request: {str(e).splitlines()[0]}", code)
            return
        start = 0
        for index, arrays in members:
            stop = start + len(arrays[0])
            tensors = [pb_utils.Tensor(name, out[start:stop] if dtype is None or out.dtype == dtype
                                       else out[start:stop].astype(dtype))
                       for name, out, dtype in zip(self.output_names, outputs, self.output_dtypes)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = stop

    def finalize(self):
        self.session = None


def error_response(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
