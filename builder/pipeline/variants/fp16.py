"""`fp16`: ONNX float16 weights and arithmetic, float32 inputs and outputs kept (casts at the edges).

Meant for GPU deployment (`builder build --device gpu`, Tensor Cores). ONNX Runtime's CPU provider has few float16
kernels and runs the rest through casts: on CPU it is usually slower than fp32 and fails the speed gate - the
build record says so with the measured numbers rather than hiding the variant.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

STAGE = "onnx"
PRECISION = "fp16"  # of the weights this step leaves
TRAINS = False
SIZE_ONLY = False
# Clip stays float32: ONNX Runtime 1.19 (the 24.10 image's) clips float16 to 0 when one bound is absent
# (microsoft/onnxruntime#21957), which turned MiniLM's `clamp(min=1e-9)` pooling divisor into 0 and every output
# into NaN there (found by tests/e2e/test_portability.py).
ALWAYS_FLOAT32 = ("Clip",)


@dataclass(frozen=True)
class Config:
    keep_in_float32: tuple = ()  # op types kept in float32 (beyond ONNX Runtime's own default block list)


def apply(onnx_file: pathlib.Path, context, config: Config) -> pathlib.Path:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_file)), keep_io_types=True,
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(ALWAYS_FLOAT32)
                                     + list(config.keep_in_float32))
    output = context.out / "model.fp16.onnx"
    onnx.save_model(model, str(output))
    return output
