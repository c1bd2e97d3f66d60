"""`reparam`: a MobileOne-style student CNN, distilled from the fp32 model, then re-parameterized for serving.

While it trains, every block sums parallel branches: a 3x3 conv + BatchNorm, a 1x1 conv + BatchNorm and, when the
block keeps its channels and resolution, a BatchNorm-only identity; then ReLU. The branches are all linear in the
block's input, so once trained (BatchNorm frozen to its running statistics) each block folds exactly into one 3x3
conv with a bias (`reparameterize`): the served graph is a plain chain of Conv + ReLU, with the accuracy the
branches trained to and the cost of a single conv per block (MobileOne, Vasu et al. 2023; RepVGG, Ding et al. 2021).

The student is an image classifier of its own (it does not copy the teacher's layers), so it needs a spec with one
float input [batch, C, H, W] and one output, the metric's logits [batch, classes]. It keeps the teacher's input
contract: raw inputs in the same units, standardised inside the model with the training split's per-channel mean
and standard deviation (for digits: (x - 33.3) / 78.6, what the teacher's (x / 255 - 0.1307) / 0.3081 is).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from ...core.errors import VariantError
from ..measure import count_macs, fixed_batch, latency_p50_ms, torch_accuracy
from ..torch2onnx import example_batch, export, verify
from ..train import TrainingOverrides, distillation_loss, fine_tune, shift_images

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False

# Folded vs branched logits may differ by float32 rounding only: the sums run in another order.
EQUIVALENCE_RTOL = 1e-4  # of the largest |logit| (at least 1)
MEMORY_RUNS = 5


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    widths: tuple[int, ...] = (16, 32, 64)  # channels of each stage
    depths: tuple[int, ...] = (1, 1, 2)  # blocks per stage; the blocks after a stage's first have an identity branch
    strides: tuple[int, ...] = (2, 2, 1)  # of each stage's first block (2 halves H and W): 28 -> 14 -> 7 -> 7
    temperature: float = 2.0
    alpha: float = 0.5
    augment_shift: int = 0  # image students: train on inputs shifted by up to this many pixels (train.shift_images)
    augment_per_example: bool = False  # one shift per image instead of one per batch
    # initialise the first block's 3x3 conv from the teacher's first conv where the kernel and input channels match:
    # its widths[0] filters of largest norm (stem_from_teacher)
    stem_from_teacher: bool = False

    def check(self) -> None:
        super().check()
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise VariantError(f"reparam: need temperature > 0 and 0 <= alpha <= 1; got {self}")
        stages = {len(self.widths), len(self.depths), len(self.strides)}
        if not self.widths or len(stages) != 1 or min(self.widths + self.depths + self.strides) < 1:
            raise VariantError(f"reparam: widths, depths and strides need one positive entry per stage; got widths "
                               f"{self.widths}, depths {self.depths}, strides {self.strides}")


def image_classifier(spec) -> tuple[str, int, int]:
    """(input name, channels, classes) of an image classifier spec. Raises VariantError for any other model."""
    if len(spec.inputs) != 1:
        raise VariantError(f"reparam: builds an image classifier with one input [batch, C, H, W]; {spec.name} has "
                           f"{len(spec.inputs)} inputs ({', '.join(t.name for t in spec.inputs)})")
    image = spec.inputs[0]
    if len(image.shape) != 4 or not image.dtype.startswith("float") or not isinstance(image.shape[1], int):
        raise VariantError(f"reparam: input `{image.name}` of {spec.name} is {image.dtype} {list(image.shape)}, not an "
                           "image: a float [batch, C, H, W] with a fixed channel count C",
                           hint="reparam only fits image classifiers; try `distilled` or `pruned`")
    logits = spec.outputs[0]
    if (len(spec.outputs) != 1 or logits.name != spec.metric.output or len(logits.shape) != 2
            or not isinstance(logits.shape[1], int)):
        raise VariantError(f"reparam: {spec.name} must have one output, the metric's logits [batch, classes]; it has "
                           + ", ".join(f"`{t.name}` {list(t.shape)}" for t in spec.outputs))
    return image.name, image.shape[1], logits.shape[1]


def fold_bn(conv_weight, conv_bias, bn):
    """(weight, bias) of one conv equal to conv followed by `bn` in eval mode (its running statistics):
    weight * gamma / sqrt(var + eps) per output channel; bias beta - gamma (mean - b) / sqrt(var + eps), where b
    is the conv's bias (None: 0)."""
    import torch

    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    b = conv_bias if conv_bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return conv_weight * scale.reshape(-1, 1, 1, 1), beta - scale * (bn.running_mean - b)


def folded_block(block):
    """One 3x3 conv with bias + ReLU, equal to the MobileOne `block` with BatchNorm frozen."""
    import torch
    from torch import nn

    with torch.no_grad():
        weight, bias = fold_bn(block.conv3.weight, None, block.bn3)
        w1, b1 = fold_bn(block.conv1.weight, None, block.bn1)
        weight = weight + nn.functional.pad(w1, (1, 1, 1, 1))  # 1x1 -> centre of a 3x3
        bias = bias + b1
        if block.identity is not None:
            channels = block.conv3.in_channels
            one_hot = torch.zeros(channels, channels, 3, 3, dtype=weight.dtype)
            one_hot[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            wi, bi = fold_bn(one_hot, None, block.identity)
            weight, bias = weight + wi, bias + bi
        conv = nn.Conv2d(block.conv3.in_channels, block.conv3.out_channels, 3, block.conv3.stride, 1, bias=True)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return nn.Sequential(conv, nn.ReLU())


@functools.cache
def _torch_modules():
    """The student's classes, defined once on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    class MobileOneBlock(nn.Module):
        """relu(bn(conv3x3(x)) + bn(conv1x1(x)) [+ bn(x)]): the identity branch when channels and size are kept."""

        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv3 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)  # samples the 3x3's centre tap
            self.bn1 = nn.BatchNorm2d(cout)
            self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.relu = nn.ReLU()

        @property
        def branches(self) -> int:
            return 3 if self.identity is not None else 2

        def forward(self, x):
            y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
            if self.identity is not None:
                y = y + self.identity(x)
            return self.relu(y)

        def fold(self) -> nn.Module:
            return folded_block(self)

    class ReparamStudent(nn.Module):
        """Standardise -> blocks -> global average pool -> linear logits. `forward(image)`: see `student`."""

        def __init__(self, channels: int, classes: int, widths, depths, strides, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
            blocks, cin = [], channels
            for width, depth, stride in zip(widths, depths, strides):
                for i in range(depth):
                    blocks.append(MobileOneBlock(cin, width, stride if i == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(cin, classes)

        def forward(self, *args, **kwargs):
            (image,) = (*args, *kwargs.values())
            x = self.blocks((image - self.mean) / self.std)
            return self.head(x.mean((2, 3)))

    return MobileOneBlock, ReparamStudent


@functools.cache
def _named_student(input_name: str):
    """ReparamStudent with a forward whose signature names `input_name`: the trainer calls model(**inputs) and
    torch.export binds inputs by the forward's signature. The computation is ReparamStudent's."""
    _, base = _torch_modules()
    p = inspect.Parameter

    def forward(self, *args, **kwargs):
        return base.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.Signature([p("self", p.POSITIONAL_OR_KEYWORD),
                                               p(input_name, p.POSITIONAL_OR_KEYWORD)])
    return type(base.__name__, (base,), {"forward": forward, "__doc__": base.__doc__})


def student(input_name: str, channels: int, classes: int, config: Config, mean, std):
    """A fresh (randomly initialised) branched student: forward(<input_name>: [batch, channels, H, W] in the
    teacher's raw units) -> logits [batch, classes]."""
    return _named_student(input_name)(channels, classes, config.widths, config.depths, config.strides,
                                        mean, std)


def blocks_of(model) -> list:
    """The model's MobileOne blocks (branched), in order."""
    block_type, _ = _torch_modules()
    return [m for m in model.modules() if isinstance(m, block_type)]


def reparameterize(model):
    """A copy of `model` in eval mode with every MobileOne block folded into one 3x3 conv (+ bias) and ReLU.

    Exact up to float rounding for the model in eval mode (BatchNorm uses its running statistics)."""
    block_type, _ = _torch_modules()
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, block_type):
                setattr(parent, name, child.fold())
    return folded


def stem_from_teacher(branched, teacher) -> dict:
    """Copy into the student's first 3x3 conv the teacher's first Conv2d filters, where the shapes allow: the same
    input channels and a 3x3 kernel, at least as many filters as the student's stem has (it takes the ones of
    largest L2 norm, in the teacher's order). Stride, padding and the teacher's bias do not carry over: the
    student's BatchNorm follows the conv and sets each channel's offset and scale, so only the filters' shapes
    matter. Both standardise the same raw pixels first (for digits the student's (x - 33.3) / 78.6 is the
    teacher's (x / 255 - 0.1307) / 0.3081). Returns what was done for the build record: {"from": conv name,
    "filters": [indices]}, or {"skipped": why}."""
    import torch

    stem = blocks_of(branched)[0].conv3
    name, conv = next(((n, m) for n, m in teacher.named_modules() if isinstance(m, torch.nn.Conv2d)), (None, None))
    if conv is None:
        return {"skipped": "the teacher has no Conv2d"}
    if (conv.in_channels != stem.in_channels or conv.kernel_size != stem.kernel_size or conv.groups != 1
            or conv.out_channels < stem.out_channels):
        return {"skipped": f"the teacher's first conv `{name}` is {conv.in_channels}->{conv.out_channels} "
                           f"{tuple(conv.kernel_size)} (groups {conv.groups}); the student's stem is "
                           f"{stem.in_channels}->{stem.out_channels} {tuple(stem.kernel_size)}"}
    with torch.no_grad():
        norms = conv.weight.flatten(1).norm(dim=1)
        chosen = sorted(torch.argsort(norms, descending=True, stable=True)[:stem.out_channels].tolist())
        stem.weight.copy_(conv.weight[chosen])
    return {"from": name, "filters": chosen}


def channel_stats(images: np.ndarray) -> tuple[list, list]:
    """Per-channel mean and standard deviation of [N, C, H, W] images (float64, then rounded to float32)."""
    data = images.astype(np.float64)
    return data.mean(axis=(0, 2, 3)).tolist(), np.maximum(data.std(axis=(0, 2, 3)), 1e-6).tolist()


def onnx_ops(path: pathlib.Path) -> dict:
    import onnx

    ops: dict = {}
    for node in onnx.load(str(path)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items()))


# Runs in a fresh interpreter: the peak resident memory that creating an ONNX Runtime session and running it adds.
# VmHWM (this process's peak RSS) is reset to the current RSS just before the session is created (clear_refs 5),
# so the one-off peak of importing numpy and onnxruntime does not count. Not ru_maxrss: a child started by vfork
# from the (large) build process inherits the parent's peak in ru_maxrss.
MEMORY_PROBE = """
import json, sys
import numpy as np
import onnxruntime as ort

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))  # KiB

path, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[4])
batch = np.load(sys.argv[3])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
for _ in range(runs):
    session.run(None, {name: batch})
print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM"), "peak_reset": reset}))
"""


def session_memory_mib(onnx_path: pathlib.Path, input_name: str, batch: np.ndarray) -> dict:
    """Peak resident memory (MiB) that loading `onnx_path` into a 1-thread ONNX Runtime session and running `batch`
    MEMORY_RUNS times adds to a fresh process, and that process's whole peak (interpreter + onnxruntime too)."""
    batch_file = onnx_path.with_suffix(".memory_batch.npy")
    np.save(batch_file, batch)
    try:
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(onnx_path), input_name, str(batch_file),
                                 str(MEMORY_RUNS)], capture_output=True, text=True, timeout=120,
                                check=False)
    finally:
        batch_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise VariantError(f"reparam: measuring the memory of {onnx_path.name} failed: "
                           f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    return {"session_peak_mib": round((probe["peak_kib"] - probe["before_kib"]) / 1024, 1),
            "process_peak_mib": round(probe["peak_kib"] / 1024, 1)}


def equivalence(branched, folded, images) -> dict:
    """The record's check that the folded student equals the branched one on `images`; raises VariantError when
    it does not (folding is wrong)."""
    import torch

    with torch.no_grad():
        want, got = branched(images), folded(images)
    diff = float((want - got).abs().max())
    tolerance = EQUIVALENCE_RTOL * max(1.0, float(want.abs().max()))
    if not diff <= tolerance:
        raise VariantError(f"reparam: the folded student differs from the branched one by {diff:.3g} on "
                           f"{len(images)} validation images (tolerance {tolerance:.3g}); folding is wrong")
    return {"max_abs_diff": diff, "tolerance": tolerance, "examples": len(images),
            "rule": f"{EQUIVALENCE_RTOL:g} x max(1, largest |logit|)"}


def branched_beside_folded(branched, folded, context, validation, input_name: str) -> dict:
    """The branched model as it would be served without folding, exported and measured beside the folded one
    (model.onnx): operators, latency at batch 1 and 32, session memory."""
    spec = context.spec
    context.progress("reparam: exporting the branched student and measuring it beside the folded one")
    branched_path = context.out / "branched.onnx"
    folded_path = context.out / "folded.onnx"
    export(branched, spec, example_batch(spec), branched_path)
    export(folded, spec, example_batch(spec), folded_path)
    verify(branched, spec, branched_path, validation.spread(8).inputs)
    latency, memory = {}, {}
    batches = {b: fixed_batch(spec, context.splits[spec.evaluate[0]], b) for b in (1, 32)}
    for name, path in (("branched", branched_path), ("folded", folded_path)):
        latency[name] = {f"b{b}_t1": latency_p50_ms(path, inputs, threads=1) for b, inputs in batches.items()}
        memory[name] = session_memory_mib(path, input_name, batches[32][input_name])
    return {"onnx_ops": {"branched": onnx_ops(branched_path), "folded": onnx_ops(folded_path)},
            "latency_p50_ms": latency,
            "latency_method": "in-process ONNX Runtime, 1 intra-op thread, p50 (builder.pipeline.measure.latency_p50_ms)",
            "memory": memory,
            "memory_method": (f"fresh process per model: peak RSS (VmHWM, reset before the session) minus RSS "
                              f"just before creating a 1-thread ONNX Runtime session and running batch 32 "
                              f"{MEMORY_RUNS} times; process_peak_mib includes the interpreter and onnxruntime")}


def apply(model, context, config: Config):
    import torch

    spec = context.spec
    input_name, channels, classes = image_classifier(spec)
    teacher = context.teacher.eval()
    train_split = context.splits[spec.train_split]
    mean, std = channel_stats(train_split.inputs[input_name])
    torch.manual_seed(0)
    branched = student(input_name, channels, classes, config, mean, std)
    validation = context.splits[spec.validation_split].spread(256)

    def accuracy(m) -> float:
        return torch_accuracy(m, spec, validation)

    stem = stem_from_teacher(branched, teacher) if config.stem_from_teacher else None
    if stem is not None:
        context.progress(f"reparam: stem from the teacher: {stem}")
    info = {"student": "mobileone", "stem_from_teacher": stem, "widths": list(config.widths),
            "depths": list(config.depths), "strides": list(config.strides),
            "normalisation": {"mean": [round(m, 4) for m in mean], "std": [round(s, 4) for s in std]},
            "student_untrained_validation_accuracy": accuracy(branched.eval())}
    augment = shift_images(config.augment_shift, config.augment_per_example) if config.augment_shift else None
    loss = distillation_loss(teacher, 0, config.temperature, config.alpha, cache_teacher=augment is None)
    branched = fine_tune(branched, context, config, "distillation", loss, augment)
    info["student_validation_accuracy"] = accuracy(branched)

    context.handoff["reparam"] = (branched, info, validation, input_name)  # for finish, on rank 0
    return reparameterize(branched)


def finish(folded, context, config: Config):
    """Rank 0's part, once every rank trained: the folded student checked against the branched one, counted,
    and both measured side by side."""
    import torch

    spec, teacher = context.spec, context.teacher.eval()
    branched, info, validation, input_name = context.handoff.pop("reparam")
    info["equivalence"] = equivalence(branched, folded, torch.from_numpy(validation.inputs[input_name]))
    blocks = blocks_of(branched)
    info["blocks"] = len(blocks)
    info["branches_per_block"] = [b.branches for b in blocks]
    one = fixed_batch(spec, context.splits[spec.evaluate[0]], 1)
    info["params"] = {"branched": int(sum(p.numel() for p in branched.parameters())),
                      "folded": int(sum(p.numel() for p in folded.parameters()))}
    info["macs"] = {"teacher": count_macs(teacher, one), "branched": count_macs(branched, one),
                    "folded": count_macs(folded, one)}

    info |= branched_beside_folded(branched, folded, context, validation, input_name)
    context.notes["reparam"] = info
    context.progress(f"reparam: the student's accuracy on {len(validation)} validation examples "
                     f"{info['student_untrained_validation_accuracy']:.4f} untrained -> "
                     f"{info['student_validation_accuracy']:.4f} distilled; folded "
                     f"{len(blocks)} blocks (max abs diff {info['equivalence']['max_abs_diff']:.2g}); MACs {info['macs']['branched']} branched -> "
                     f"{info['macs']['folded']} folded (teacher {info['macs']['teacher']})")
    return folded
