"""`qat`: quantization-aware training, then the same static QDQ quantization as `int8-static`.

During a short fine-tune every Conv/Linear sees its weights fake-quantized to the int8 grid ONNX Runtime will use
(symmetric, per output channel, scale = max|w| / 127) and its input activations fake-quantized per tensor (8-bit
affine, range tracked by an exponential moving average), with straight-through gradients. The weights learn to
sit well on that grid; they are then baked onto it, exported in float, and quantized with calibration by the
`int8` step (static, QDQ), which ONNX Runtime runs with integer kernels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..train import TrainingOverrides, fine_tune
from . import int8

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True  # fake-quantized training in float; the int8 step that follows it quantizes
SIZE_ONLY = False


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    ema: float = 0.9  # activation range tracking
    train_lr: float | None = 1e-4  # a gentle fine-tune of trained weights, whatever the spec's training lr


def fake_quant_weight(weight, levels: int = 127):
    """`weight` on the symmetric per-channel grid of ±`levels` steps (127: int8; 64: int8 with ONNX Runtime's
    reduce_range, its 7-bit weights)."""
    import torch

    dims = tuple(range(1, weight.dim()))
    scale = weight.detach().abs().amax(dim=dims, keepdim=True).clamp(min=1e-8) / float(levels)
    quantized = torch.clamp(torch.round(weight / scale), -levels, levels) * scale
    return weight + (quantized - weight).detach()  # straight-through estimator


def weight_fake_quant(levels: int = 127):
    """A parametrization: the layer always computes with its weight on the grid the int8 step will use."""
    import torch

    class WeightFakeQuant(torch.nn.Module):
        def forward(self, weight):
            return fake_quant_weight(weight, levels)

    return WeightFakeQuant()


def activation_hook(ema: float):
    import torch

    state = {}

    def hook(module, args):
        (x, *rest) = args
        if not x.is_floating_point():
            return None
        low, high = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
        if module.training:
            state["low"] = low if "low" not in state else ema * state["low"] + (1 - ema) * low
            state["high"] = high if "high" not in state else ema * state["high"] + (1 - ema) * high
        lo, hi = state.get("low", low), state.get("high", high)
        scale = ((hi - lo) / 255.0).clamp(min=1e-8)
        zero = torch.round(-lo / scale)
        quantized = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
        return (x + (quantized - x).detach(), *rest)

    return hook


def apply(model, context, config: Config):
    import torch
    from torch.nn.utils import parametrize

    student = copy.deepcopy(model)
    # train on the grid the int8 step will quantize to: 7-bit weights where it chooses reduce_range (x86 without
    # VNNI, builder/variants/int8.py), whose symmetric int8 range is then ±64 (ONNX Runtime's get_qmin_qmax_for_qType)
    reduce_range, _, _ = int8.chosen_reduce_range(context.spec.variants.get("int8", {}).get("reduce_range"))
    levels = 64 if reduce_range else 127
    layers = [m for m in student.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = []
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", weight_fake_quant(levels))
        hooks.append(layer.register_forward_pre_hook(activation_hook(config.ema)))
    student = fine_tune(student, context, config, "quantization-aware training")
    for hook in hooks:
        hook.remove()
    for layer in layers:  # keep the weights exactly on the int8 grid they were trained on
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    context.notes["qat_layers"] = len(layers)
    context.notes["qat_weight_levels"] = levels
    return student
