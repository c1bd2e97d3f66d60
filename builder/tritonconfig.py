"""Triton model configuration: built as a dict, checked against server 2.51's own schema, written as text proto.

The schema is the ModelConfig descriptor of tritonclient 2.51.0 (same release branch as the server in container
24.10 and in nvidia-pytriton 0.7.0), kept in schema/model_config_2_51.binpb (see schema/extract_schema.py). Newer
tritonclient protos accept fields that server 2.51 rejects with only "failed to read text proto".
"""

from __future__ import annotations

import functools
import os
import pathlib
from dataclasses import dataclass

from .errors import RepositoryError

SCHEMA = pathlib.Path(__file__).parent / "schema" / "model_config_2_51.binpb"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class ServingConfig:
    """How Triton runs one model on CPU. Each default is explained where it is decided."""

    instances: int = 1
    # None: the machine's cores divided by the instances, so instances x threads never oversubscribes the cores.
    intra_op_threads: int | None = None
    inter_op_threads: int = 1  # sequential execution mode uses none; 1 avoids a pool of idle threads
    # 0: no added wait. Requests that arrive while the instance is busy are still batched, so batching happens under
    # load without taxing the single request (500 us was measured to add ~0.6 ms at concurrency 1 on this machine;
    # `python -m loadtests bench` reports both).
    max_queue_delay_us: int = 0
    warmup: bool = True

    def threads(self) -> int:
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.instances)


@functools.cache
def model_config_class():
    """The ModelConfig message class of Triton 2.51, in a private descriptor pool (no clash with tritonclient's)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(SCHEMA.read_bytes()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def build_config(name: str, spec, serving: ServingConfig) -> dict:
    """The config of model `name` (a ModelSpec served with `serving`) as a dict in ModelConfig's field names."""
    def tensor(t):
        return {"name": t.name, "data_type": TRITON_DTYPES[t.dtype], "dims": [-1 if isinstance(d, str) else d for d in t.shape[1:]]}

    config = {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": spec.max_batch_size,
        "input": [tensor(t) for t in spec.inputs],
        "output": [tensor(t) for t in spec.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": serving.max_queue_delay_us},
        "instance_group": [{"kind": "KIND_CPU", "count": serving.instances}],
        "parameters": {
            "intra_op_thread_count": {"string_value": str(serving.threads())},
            "inter_op_thread_count": {"string_value": str(serving.inter_op_threads)},
            "execution_mode": {"string_value": "0"},
        },
    }
    if serving.warmup:
        config["model_warmup"] = [{
            "name": "batch_1",
            "batch_size": 1,
            "inputs": {t.name: {"data_type": TRITON_DTYPES[t.dtype], "dims": spec.example_shape(t)[1:],
                                # zeros are valid token ids and masks; random floats exercise real arithmetic
                                **({"random_data": True} if t.dtype.startswith("float") else {"zero_data": True})}
                       for t in spec.inputs},
        }]
    return config


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
