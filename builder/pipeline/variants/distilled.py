"""`distilled`: a smaller student trained from the fp32 model (the teacher).

Students: for a model built of repeated blocks (a transformer's layers), the student keeps `keep_layers` of them,
evenly spaced and initialised from the teacher's own layers; for a CNN, every convolution with more than one input
channel becomes depthwise-separable (a k x k depthwise conv + a 1 x 1 pointwise conv; about k^2 x fewer MACs for
wide layers), freshly initialised. Loss: response-based (KL on temperature-softened logits, weighted `alpha`
against the hard-label cross-entropy) plus feature-based (squared error between the student's and the teacher's
`feature_output`, e.g. the sentence embedding). Both students keep the teacher's feature width; a student that
changed it would need the learned projection that builder.pipeline.train.distillation_loss accepts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ...core.errors import VariantError
from ..measure import count_macs, fixed_batch, torch_accuracy
from ..train import TrainingOverrides, distillation_loss, feature_output_index, fine_tune, shift_images

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False


@dataclass(frozen=True)
class DistillationOptions(TrainingOverrides):
    """What `distill` reads (and the training budget); the Config of every variant that trains a student through
    it extends this."""
    temperature: float = 2.0
    alpha: float = 0.5
    feature_weight: float = 1.0
    feature_output: str | None = None  # default: the first float output that is not the metric's

    def check(self) -> None:
        super().check()
        if self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.feature_weight < 0:
            variant = type(self).__module__.rsplit(".", 1)[-1]  # the variant whose options are wrong
            raise VariantError(f"{variant}: need temperature > 0, 0 <= alpha <= 1, feature_weight >= 0; got {self}")


@dataclass(frozen=True)
class Config(DistillationOptions):
    keep_layers: int | None = None  # blocks the student keeps; default: half
    augment_shift: int = 0  # image students: train on inputs shifted by up to this many pixels (train.shift_images)


def repeated_blocks(model):
    """(parent module, attribute name, ModuleList) of the longest ModuleList of identical block types."""
    import torch

    best = None
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) >= 2 and len({type(b) for b in child}) == 1:
                if best is None or len(child) > len(best[2]):
                    best = (module, name, child)
    return best


def layer_student(model, keep: int | None):
    import torch

    student = copy.deepcopy(model)
    parent, name, blocks = repeated_blocks(student)
    keep = keep or max(1, len(blocks) // 2)
    if not 1 <= keep < len(blocks):
        raise VariantError(f"distilled: keep_layers must be between 1 and {len(blocks) - 1} for this model's "
                           f"{len(blocks)} blocks, got {keep}")
    chosen = sorted(set(np.linspace(0, len(blocks) - 1, keep).round().astype(int).tolist()))
    setattr(parent, name, torch.nn.ModuleList([blocks[i] for i in chosen]))
    for module in student.modules():  # HF models read their layer count from their config
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(chosen)
    return student, {"student": "layers", "kept_layers": chosen, "teacher_layers": len(blocks)}


def separable_student(model):
    import torch

    student = copy.deepcopy(model)
    replaced = []
    for parent_name, parent in list(student.named_modules()):
        for name, conv in list(parent.named_children()):
            if isinstance(conv, torch.nn.Conv2d) and conv.in_channels > 1 and conv.groups == 1 and conv.kernel_size != (1, 1):
                separable = torch.nn.Sequential(
                    torch.nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding,
                                    conv.dilation, groups=conv.in_channels, bias=False),
                    torch.nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None))
                setattr(parent, name, separable)
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    if not replaced:
        return None, {}
    return student, {"student": "depthwise-separable", "separable_convs": replaced}


def make_student(model, config: Config):
    if repeated_blocks(model) is not None:
        return layer_student(model, config.keep_layers)
    student, info = separable_student(model)
    if student is None:
        raise VariantError("distilled: no student recipe fits this model: it has neither repeated blocks "
                           "(transformer layers) nor convolutions to make depthwise-separable")
    return student, info


def separable_macs(model, student, replaced: list[str], example: dict) -> dict:
    """MACs (batch 1, `example`'s shape) of the standard-conv model and its depthwise-separable student, and per
    replaced conv the two textbook counts from its kernel D_K, channels M -> N and output size D_F (from a forward
    hook): standard D_K*D_K*M*N*D_F*D_F, separable D_K*D_K*M*D_F*D_F + M*N*D_F*D_F."""
    import torch

    modules = dict(model.named_modules())
    sizes, hooks = {}, []

    def record(name):
        def hook(module, inputs, output):  # returns None: the output passes on unchanged
            sizes.setdefault(name, tuple(output.shape[-2:]))
        return hook

    for name in replaced:
        hooks.append(modules[name].register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(**{k: torch.from_numpy(v) for k, v in example.items()})
    finally:
        for hook in hooks:
            hook.remove()
    per_conv = {}
    for name in replaced:
        conv = modules[name]
        k = conv.kernel_size[0] * conv.kernel_size[1]
        m, n, f = conv.in_channels, conv.out_channels, sizes[name][0] * sizes[name][1]
        per_conv[name] = {"D_K": list(conv.kernel_size), "M": m, "N": n, "D_F": list(sizes[name]),
                          "standard": k * m * n * f, "separable": k * m * f + m * n * f}
    return {"standard_student": count_macs(model, example), "separable_student": count_macs(student, example),
            "per_conv": per_conv}


def apply(model, context, config: Config):
    student, info = make_student(model, config)
    if info.get("student") == "depthwise-separable":  # a standard-conv student of the same width is the teacher
        example = fixed_batch(context.spec, context.splits[context.spec.evaluate[0]], 1)
        info["macs"] = separable_macs(model, student, info["separable_convs"], example)
    return distill(student, info, context, config, "distilled")


def distill(student, info: dict, context, config, what: str):
    """Train `student` from context.teacher with distillation_loss as `config` says (temperature, alpha,
    feature_weight, feature_output, the training budget); record `info` and the student's validation accuracy
    before and after as context.notes[what]. Returns the trained student."""
    spec = context.spec
    teacher = context.teacher.eval()
    names = [t.name for t in spec.outputs]
    metric_index = names.index(spec.metric.output)
    feature_index = feature_output_index(spec, config.feature_output)
    feature = names[feature_index] if feature_index is not None else None

    validation = context.splits[spec.validation_split].spread(256)

    def accuracy(m) -> float:
        return torch_accuracy(m, spec, validation)

    info["student_untrained_validation_accuracy"] = accuracy(student.eval())
    info["feature_loss_on"] = feature if feature and config.feature_weight > 0 else None
    shift = getattr(config, "augment_shift", 0)  # image students only
    augment = shift_images(shift) if shift else None
    loss = distillation_loss(teacher, metric_index, config.temperature, config.alpha, feature_index,
                             config.feature_weight, cache_teacher=augment is None)
    student = fine_tune(student, context, config, "distillation", loss, augment)
    info["student_validation_accuracy"] = accuracy(student)
    context.notes[what] = info
    # on a spread sample, not the whole split that checkpoint selection scores: the two figures differ
    context.progress(f"{what}: the student's accuracy on {len(validation)} validation examples "
                     f"{info['student_untrained_validation_accuracy']:.4f} untrained -> "
                     f"{info['student_validation_accuracy']:.4f} distilled")
    return student
