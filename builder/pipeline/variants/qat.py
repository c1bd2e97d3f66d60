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

from ...core.errors import VariantError
from ..sources.onnxfile import OnnxFile
from ..sources.torchprogram import CHECK_ROWS, retrained_program_onnx, trainable_program
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


def fake_quant_activation(x, state: dict, ema: float, observe: bool):
    """`x` on the 8-bit affine grid of its running range (`state`: low and high, tracked by an exponential moving
    average of `ema` while `observe`), with a straight-through gradient."""
    import torch

    low, high = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
    if observe:
        state["low"] = low if "low" not in state else ema * state["low"] + (1 - ema) * low
        state["high"] = high if "high" not in state else ema * state["high"] + (1 - ema) * high
    lo, hi = state.get("low", low), state.get("high", high)
    scale = ((hi - lo) / 255.0).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    quantized = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    return x + (quantized - x).detach()


def activation_hook(ema: float):
    state = {}

    def hook(module, args):
        (x, *rest) = args
        if not x.is_floating_point():
            return None
        return (fake_quant_activation(x, state, ema, module.training), *rest)

    return hook


def weight_levels(context) -> int:
    """The grid the int8 step will quantize to: 7-bit weights where it chooses reduce_range (x86 without VNNI,
    builder/pipeline/variants/int8.py), whose symmetric int8 range is then ±64 (ONNX Runtime's get_qmin_qmax_for_qType)."""
    reduce_range, _, _ = int8.chosen_reduce_range(context.spec.variants.get("int8", {}).get("reduce_range"))
    return 64 if reduce_range else 127


def apply(model, context, config: Config):
    import torch
    from torch.nn.utils import parametrize

    if isinstance(model, OnnxFile):  # an ONNX source: its torch.export program, if it came from one
        return program_qat(model, context, config)
    student = copy.deepcopy(model)
    levels = weight_levels(context)
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


def program_qat(source: OnnxFile, context, config: Config):
    """QAT of the torch.export program an ONNX source was exported from: every aten conv2d and linear of its graph
    computes with its weight fake-quantized to the int8 grid and its input fake-quantized per tensor (the same
    rules as above, inserted into the graph, since a program has no Conv2d or Linear modules to parametrize). The
    unchanged program is the teacher. After training the weights are baked onto the grid, and the program with
    them is exported: the ONNX source that the int8 step then quantizes. Raises VariantError for a source without
    a program or a graph without a conv or linear."""
    if source.program is None:
        raise VariantError(f"{context.spec.name}: qat trains the model, and this ONNX source has no torch.export "
                           "program to train", hint="build it with --torch-program FILE.pt2 (torch.export.save), "
                                                    "or build the post-training variants: fp16, int8")
    levels = weight_levels(context)
    context.teacher = trainable_program(source.program).eval()
    student = trainable_program(source.program)
    restore = fake_quantize_graph(student.graph_module, levels, config.ema)
    if not restore:
        raise VariantError(f"{context.spec.name}: qat found no conv2d or linear in the program's graph")
    student = fine_tune(student, context, config, "quantization-aware training")
    restore()
    context.notes["qat_layers"] = len(restore.weights)
    context.notes["qat_weight_levels"] = levels
    context.notes["qat_from"] = f"the torch.export program {source.program}"
    context.handoff["qat"] = source.program  # for finish, on rank 0
    return student


def finish(student, context, config: Config):
    """Rank 0's part, once every rank trained: a trained program goes to ONNX (a torch model needs nothing
    here: the build exports it)."""
    program = context.handoff.pop("qat", None)
    if program is None:
        return student
    # the program itself, with the trained weights, goes to ONNX: the exporter takes a program, not the graph
    # module it unlifts to
    rows = context.splits[context.spec.train_split].take(CHECK_ROWS).inputs
    target = retrained_program_onnx(program, student.graph_module.state_dict(), rows,
                                    context.out / "qat_program.onnx")
    return OnnxFile(target)


def fake_quantize_graph(graph_module, levels: int, ema: float):
    """Rewrite `graph_module` so that every aten conv2d / linear reads a fake-quantized weight and input. Returns
    a callable that bakes those weights onto the grid and restores the graph (its `weights`: the parameters
    baked), or None when the graph has no such node. The activations' ranges are observed while gradients are on
    (training steps), not while a checkpoint is scored."""
    import torch

    targets = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    graph, originals, weights = graph_module.graph, {}, []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in targets or node.args[1].op != "get_attr":
            continue
        x, weight = node.args[0], node.args[1]
        name = f"qat_activation_{len(originals)}"
        graph_module.add_submodule(name, activation_fake_quant(ema))
        with graph.inserting_before(node):
            quantized_x = graph.call_module(name, (x,))
            quantized_w = graph.call_function(fake_quant_weight, (weight, levels))
        originals[node] = (node.args, name, quantized_x, quantized_w)
        node.args = (quantized_x, quantized_w, *node.args[2:])
        weights.append(weight.target)
    if not originals:
        return None
    graph_module.recompile()

    def restore() -> None:
        with torch.no_grad():
            for target in weights:
                parameter = graph_module.get_parameter(target)
                parameter.copy_(fake_quant_weight(parameter, levels))
        for node, (args, name, quantized_x, quantized_w) in originals.items():
            node.args = args
            graph.erase_node(quantized_x)
            graph.erase_node(quantized_w)
            graph_module.delete_submodule(name)
        graph_module.recompile()

    restore.weights = weights
    return restore


def activation_fake_quant(ema: float):
    """A module for the graph: its input on the 8-bit grid (fake_quant_activation), observed while training."""
    import torch

    class ActivationFakeQuant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.state = {}

        def forward(self, x):
            return fake_quant_activation(x, self.state, ema, torch.is_grad_enabled())

    return ActivationFakeQuant()
