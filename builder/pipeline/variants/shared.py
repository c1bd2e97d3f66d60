"""`shared`: ALBERT's cross-layer parameter sharing as a distilled student. The student keeps the teacher's depth
(every transformer layer position still runs) but holds only `unique_layers` distinct layer modules, each reused at
consecutive positions: for 6 layers and 2 unique ones the positions run teacher layers [0, 0, 0, 3, 3, 3], the
same module object three times. Each shared module starts from the teacher layer at the first position of its
group; the student is then trained by distillation from the teacher (logits and features), as `distilled` does.

What it buys: fewer unique parameters and a smaller ONNX file. torch.export lifts a parameter used at several
positions once, so the ONNX file stores each shared weight once (torch 2.13, MiniLM with 2 unique layers: 61
initializers and 62 MB instead of 90 MB; tests/e2e/test_albert_variants.py checks it). What it does not buy: MACs
and latency stay the teacher's, since every position still computes a full layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ...core.errors import VariantError
from .distilled import DistillationOptions, distill, repeated_blocks

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False


@dataclass(frozen=True)
class Config(DistillationOptions):  # temperature, alpha, feature loss, training budget: as `distilled`
    unique_layers: int = 3  # distinct layer modules, each serving consecutive positions; 3 kept more accuracy than 2


def sharing_plan(layers: int, unique: int) -> list[int]:
    """For each position, the teacher layer whose module it runs: `unique` consecutive groups as even as possible,
    each running its first layer (6, 2 -> [0, 0, 0, 3, 3, 3]; 6, 4 -> [0, 0, 2, 2, 4, 5])."""
    return [int(group[0]) for group in np.array_split(np.arange(layers), unique) for _ in group]


def unique_parameters(model) -> int:
    """Parameters counted once per tensor, however many positions share it (torch's parameters() deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def shared_student(model, unique: int):
    """A copy of `model` whose repeated blocks share `unique` modules; and the facts for the build record.
    Raises VariantError when the model has no repeated blocks or `unique` is not below their number."""
    import torch

    found = repeated_blocks(model)
    if found is None:
        raise VariantError("shared: the model has no repeated blocks (transformer layers) to share")
    layers = len(found[2])
    if not 1 <= unique < layers:
        raise VariantError(f"shared: unique_layers must be between 1 and {layers - 1} for this model's {layers} "
                           f"blocks, got {unique}")
    student = copy.deepcopy(model)
    parent, name, blocks = repeated_blocks(student)
    plan = sharing_plan(layers, unique)
    # the same module object at several positions: its parameters exist once and get every position's gradient
    setattr(parent, name, torch.nn.ModuleList([blocks[i] for i in plan]))
    return student, {"student": "shared layers", "total_layers": layers, "unique_layers": unique,
                     "layer_plan": plan, "teacher_params": unique_parameters(model),
                     "unique_params": unique_parameters(student),
                     "macs": "the teacher's: every position still runs a full layer"}


def apply(model, context, config: Config):
    student, info = shared_student(model, config.unique_layers)
    context.progress(f"shared: {info['total_layers']} positions run {config.unique_layers} unique layers "
                     f"{sorted(set(info['layer_plan']))}; unique parameters {info['teacher_params']:,} -> "
                     f"{info['unique_params']:,}")
    return distill(student, info, context, config, "shared")
