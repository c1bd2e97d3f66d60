"""Triton model configuration: built as a dict, checked against server 2.51's own schema, written as text proto.

The schema is the ModelConfig descriptor of tritonclient 2.51.0 (same release branch as the server in container
24.10 and in nvidia-pytriton 0.7.0), kept in schema/model_config_2_51.binpb (see schema/extract_schema.py). Newer
tritonclient protos accept fields that server 2.51 rejects with only "failed to read text proto".
"""

from __future__ import annotations

import functools
import os
import pathlib
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError, RepositoryError
from .limits import to_parameter

SCHEMA = pathlib.Path(__file__).parent / "schema" / "model_config_2_51.binpb"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
ONES_FILE = "ones"  # warm-up data files `ones_<dtype>_<count>` (model directory's warmup/): that many ones
# The TensorRT engine cache goes to a directory ONNX Runtime creates (one level only: it calls create_directory) in
# the server's writable /tmp, named by the model and a digest of its ONNX file: ONNX Runtime keys cached engines by
# file name and graph structure only, not by weights, so a rebuilt model with the same graph would otherwise load
# the previous build's engine.
TENSORRT_CACHE_ROOT = "/tmp"


@dataclass(frozen=True)
class ServingConfig:
    """How Triton runs one model. Each default is explained where it is decided. Raises ConfigError when invalid."""

    # per GPU with device "gpu". None: the model spec's `instances`, else 1 (for_spec)
    instances: int | None = None
    # None: the machine's cores divided by the instances, so instances x threads never oversubscribes the cores.
    intra_op_threads: int | None = None
    inter_op_threads: int = 1  # sequential execution mode uses none; 1 avoids a pool of idle threads
    # 0: no added wait. Requests that arrive while the instance is busy are still batched, so batching happens under
    # load without taxing the single request (500 us was measured to add ~0.6 ms at concurrency 1 on this machine;
    # `python -m loadtests bench` reports both).
    max_queue_delay_us: int = 0
    warmup: bool = True
    # "cpu": KIND_CPU instances. "gpu": KIND_GPU instances (each GPU gets `instances`) for the official image's
    # native ONNX Runtime backend; the embedded server has no GPU support and serves such a model on CPU, loudly.
    device: str = "cpu"
    # GPU only: the TensorRT execution accelerator of the native backend, FP16 precision, engine cache in /tmp.
    tensorrt: bool = False
    # Text models: also write the raw-text ensemble `<model>_<variant>_text` (builder/serving/text_endpoint).
    text_endpoint: bool = False
    # The latency budget (p99, ms) the queue policy is derived from (queue_policy). None: the model spec's
    # `slo_p99_ms`, else 50 ms, the budget `loadtests run`, `tune` and the demo judge by.
    slo_p99_ms: float | None = None
    # False: no queue policy, Triton's default (an unbounded queue, no timeout), e.g. to compare under overload.
    queue_policy: bool = True

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device `{self.device}`", hint=f"known: {', '.join(DEVICES)}")
        if self.tensorrt and self.device != "gpu":
            raise ConfigError("TensorRT needs --device gpu", hint="add --device gpu, or drop --tensorrt")
        if self.slo_p99_ms is not None and not self.slo_p99_ms > 0:
            raise ConfigError(f"the latency budget must be positive, got {self.slo_p99_ms} ms",
                              hint="e.g. --slo-p99-ms 50")

    def for_spec(self, spec) -> "ServingConfig":
        """This config with `instances` (as given, else the model spec's, else 1) and `slo_p99_ms` (as given, else
        the model spec's, else 50) resolved. Raises ConfigError where the batching delay alone spends the budget:
        a lone request waits out the whole delay, so every one would miss it."""
        resolved = dataclasses.replace(
            self, instances=self.instances if self.instances is not None else getattr(spec, "instances", None) or 1,
            slo_p99_ms=self.slo_p99_ms if self.slo_p99_ms is not None else getattr(spec, "slo_p99_ms", None) or 50.0)
        if resolved.max_queue_delay_us / 1000 >= resolved.slo_p99_ms:
            raise ConfigError(f"a batching delay of {resolved.max_queue_delay_us / 1000:g} ms leaves nothing of the "
                              f"p99 latency budget of {resolved.slo_p99_ms:g} ms: a lone request waits out the delay",
                              hint="lower --max-queue-delay-us, or raise --slo-p99-ms above the delay")
        return resolved

    def threads(self) -> int:
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // (self.instances or 1))


@functools.cache
def model_config_class():
    """The ModelConfig message class of Triton 2.51, in a private descriptor pool (no clash with tritonclient's)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(SCHEMA.read_bytes()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def build_config(name: str, spec, serving: ServingConfig, model_file: pathlib.Path | None = None,
                 limits: dict | None = None, length_buckets: int = 0) -> dict:
    """The config of model `name` (a ModelSpec served with `serving`) as a dict in ModelConfig's field names.

    `model_file` (the ONNX file to be served) is needed with TensorRT: its digest names the engine cache.
    `limits` (builder/serving/limits.py derive_limits) become the parameter the embedded backend checks requests
    against.
    `length_buckets` (text models: how many): one dynamic-batching priority level per bucket. Triton's batcher
    forms a batch from consecutive queued requests and stops at the first of another shape, so texts of mixed
    buckets in arrival order batch in runs of ~1.6; the kit's clients send bucket k at priority k + 1, which keeps
    the queue ordered by bucket and lets each bucket's requests batch together (Triton core's scheduler: the same
    on the embedded server and the official image). Requests without a priority get the last level.
    """
    serving = serving.for_spec(spec)

    def tensor(t):
        return {"name": t.name, "data_type": TRITON_DTYPES[t.dtype], "dims": [-1 if isinstance(d, str) else d for d in t.shape[1:]]}

    config = {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": spec.max_batch_size,
        "input": [tensor(t) for t in spec.inputs],
        "output": [tensor(t) for t in spec.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": serving.max_queue_delay_us,
                             **({"priority_levels": length_buckets, "default_priority_level": length_buckets}
                                if length_buckets > 1 else {}),
                             **({"default_queue_policy": queue_policy(serving.slo_p99_ms, spec.max_batch_size,
                                                                      serving.instances, serving.max_queue_delay_us)}
                                if serving.queue_policy else {})},
        "instance_group": [{"kind": DEVICES[serving.device], "count": serving.instances}],
        "parameters": {
            "intra_op_thread_count": {"string_value": str(serving.threads())},
            "inter_op_thread_count": {"string_value": str(serving.inter_op_threads)},
            "execution_mode": {"string_value": "0"},
        },
    }
    if limits is not None:
        config["parameters"] |= to_parameter(limits)
    if serving.tensorrt:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            tensorrt_accelerator(name, model_file)]}}
    if serving.warmup:
        config["model_warmup"] = [{
            "name": "batch_1",
            "batch_size": 1,
            "inputs": {t.name: {"data_type": TRITON_DTYPES[t.dtype], "dims": spec.example_shape(t)[1:],
                                **warmup_data(spec, t)}
                       for t in spec.inputs},
        }]
    return config


QUEUE_TIMEOUT_SHARE, QUEUE_SIZE_FACTOR = 0.5, 2  # the build's defaults, explained below; `tune` searches both


def queue_policy(slo_p99_ms: float, max_batch_size: int, instances: int, max_queue_delay_us: int = 0,
                 timeout_share: float = QUEUE_TIMEOUT_SHARE, size_factor: int = QUEUE_SIZE_FACTOR) -> dict:
    """Triton's `dynamic_batching.default_queue_policy` for a p99 latency budget of `slo_p99_ms` milliseconds, so
    that past capacity the server sheds load with a fast error instead of queueing without bound (congestion
    collapse: latency grows until clients give up, and the server spends its CPU on requests nobody waits for).

    - `default_timeout_microseconds` = half the budget, plus the batching delay (`max_queue_delay_us`). A request
      still in the queue after that is rejected (`timeout_action: REJECT`): the other half is left for its batch to
      run and the answer to travel, so a request that is accepted has a chance to meet the budget and one that
      cannot is dropped before it costs CPU. The delay is added because Triton 2.51 times a request out while the
      batcher holds it for company: with a delay longer than the timeout every lone request is refused (found by
      the e2e tests, whose tiny model waits 200 ms for company).
    - `max_queue_size` = 2 x max_batch_size x instances: each instance can have a full next batch waiting while it
      runs one, so the queue never starves batching; a request beyond that is rejected at once.
    - `allow_timeout_override`: a request's own timeout (the kit's client sends its remaining deadline) shortens
      the queue timeout; Triton 2.51 never lets it lengthen it (measured: docs/serving.md, "Bounded queues").

    Triton answers a rejected request with gRPC UNAVAILABLE / HTTP 503, "Exceeds maximum queue size" or "Request
    timeout expired"; client.ServerOverloadedError. With priority levels (length buckets) each level has a queue of
    this size. Triton core's scheduler: the same on the embedded server and the official image.

    `timeout_share` (of the budget) and `size_factor` (x max_batch_size x instances) are those two choices; the
    build keeps 1/2 and 2, `tune` measures others under overload.
    """
    return {"max_queue_size": size_factor * max_batch_size * instances,
            "default_timeout_microseconds": round(slo_p99_ms * 1000 * timeout_share) + max_queue_delay_us,
            "timeout_action": "REJECT",
            "allow_timeout_override": True}


def warmup_data(spec, tensor) -> dict:
    """A warm-up input that the backend's input checks accept: zeros (valid token ids and pixels), but ones for
    an attention mask (an all-zero mask is refused) from a file `ones_<dtype>_<count>` that write_model writes."""
    if tensor.name == spec.sequence_mask:
        count = int(np.prod(spec.example_shape(tensor)))
        return {"input_data_file": f"{ONES_FILE}_{tensor.dtype}_{count}"}
    return {"zero_data": True}


def warmup_files(config) -> dict[str, bytes]:
    """{path in the model directory: content} of the `ones_<dtype>_<count>` warm-up files a parsed config uses."""
    files = {}
    for sample in config.model_warmup:
        for warmup_input in sample.inputs.values():
            prefix, _, rest = warmup_input.input_data_file.partition("_")
            dtype, _, count = rest.rpartition("_")
            if prefix == ONES_FILE and dtype in TRITON_DTYPES and count.isdigit():
                files[f"warmup/{warmup_input.input_data_file}"] = np.ones(int(count), dtype=dtype).tobytes()
    return files


def tensorrt_accelerator(name: str, model_file: pathlib.Path | None) -> dict:
    """The native ONNX Runtime backend's TensorRT accelerator: FP16, engines cached per model file (keys as in
    triton-inference-server/onnxruntime_backend's README, "ONNX Runtime with TensorRT optimization")."""
    import hashlib

    if model_file is None:
        raise ValueError("TensorRT configs need the model file: its digest names the engine cache")
    digest = hashlib.sha256(pathlib.Path(model_file).read_bytes()).hexdigest()[:12]
    return {"name": "tensorrt", "parameters": {
        "precision_mode": "FP16",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{TENSORRT_CACHE_ROOT}/tensorrt-engines-{name}-{digest}",
    }}


def to_text(config: dict) -> str:
    """dict -> ModelConfig (server 2.51 schema) -> text proto. Raises RepositoryError on a field 2.51 lacks."""
    from google.protobuf import json_format, text_format

    try:
        message = json_format.ParseDict(config, model_config_class()())
    except json_format.ParseError as e:
        raise RepositoryError(f"model config for `{config.get('name')}` is not valid for Triton 2.51: {e}") from e
    return text_format.MessageToString(message)


def parse_text(text: str, where: str = "config.pbtxt"):
    """Parse a config.pbtxt with server 2.51's schema. Raises RepositoryError with the line and column."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_class()())
    except text_format.ParseError as e:
        raise RepositoryError(f"{where}: not a valid Triton 2.51 model config: {e}",
                              hint="fix the field, or rebuild the model with `builder build`") from e
