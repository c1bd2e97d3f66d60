"""The one trainer: fine-tuning, distillation and QAT all run through DeepSpeed's engine.

Here DeepSpeed runs on its CPU accelerator in one process; the same code runs on GPUs, and on several machines
under DeepSpeed's launcher (which sets RANK/WORLD_SIZE/...). Known traps handled: without the launcher DeepSpeed
looks for MPI unless the rendezvous variables are set (set here when absent); the optimizer is a torch AdamW handed
to the engine, because `"AdamW"` in DeepSpeed's config triggers a long FusedAdam JIT build; its shm communication
op is JIT-built once per machine (`make install` builds it ahead: `python -m builder.train --prebuild`).
Seeds are fixed; progress is printed every few seconds; a time budget ends training early; a NaN/inf loss stops
the variant with a clear error. Optional stochastic weight averaging of the end-of-epoch weights of the last
`swa_epochs` epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .core.data import Split, trim_padding
from .core.errors import ConfigError, VariantError, unknown_name
from .core.spec import parse_spec
from .serving.server import free_port


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_seconds: float = 120.0  # the per-variant budget; training stops at the first step past it
    max_examples: int | None = None  # per epoch; None: the whole split
    swa_epochs: int = 0
    # "cosine": the learning rate decays to 0 along a cosine over the run, whichever ends it first, the epochs or
    # the time budget; for students trained from scratch. "constant": for short fine-tunes of trained weights.
    schedule: str = "constant"
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_seconds <= 0:
            raise ConfigError(f"training: epochs, batch_size, lr and max_seconds must be positive, got {self}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"training: schedule must be `constant` or `cosine`, got `{self.schedule}`")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ConfigError(f"training: swa_epochs must be between 0 and epochs ({self.epochs}), got {self.swa_epochs}")


def train_config(spec, overrides: dict | None = None) -> TrainConfig:
    """The spec's `training` section, then a variant's own overrides (e.g. its time budget)."""
    options = {**getattr(spec, "training", {}), **(overrides or {})}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise unknown_name("training option", unknown[0], known)
    config = TrainConfig(**options)
    config.check()
    return config


def training_overrides(config) -> dict:
    """A variant's own `train_seconds` / `train_lr` / `train_epochs` as overrides of the spec's training section."""
    overrides = {}
    if getattr(config, "train_seconds", None):
        overrides["max_seconds"] = config.train_seconds
    if getattr(config, "train_lr", None):
        overrides["lr"] = config.train_lr
    if getattr(config, "train_epochs", None):
        overrides["epochs"] = config.train_epochs
    return overrides


def _rendezvous() -> None:
    """Single-process defaults for what DeepSpeed's launcher would set."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def train(model, loss_fn: Callable, split, spec, config: TrainConfig, progress: Callable[[str], None] = print,
          what: str = "training", augment: Callable | None = None, after_backward: Callable | None = None):
    """Train `model` in place on `split`; `loss_fn(model, inputs: dict of tensors, labels: tensor) -> scalar`.
    `augment(batch: dict of arrays, rng) -> batch` changes each batch first (e.g. `shift_images`).
    `after_backward(model)` runs between each backward pass and optimizer step, on the gradients (e.g. a
    sparsity regularizer that adds its own gradient, as Torch-Pruning's GroupNormPruner.regularize does).

    Returns the trained model in eval mode. Raises VariantError when the loss becomes NaN or infinite.
    """
    import logging

    import torch

    _rendezvous()
    torch.manual_seed(config.seed)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
        "train_micro_batch_size_per_gpu": config.batch_size, "gradient_accumulation_steps": 1,
        "steps_per_print": 10 ** 9, "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0,
        "wall_clock_breakdown": False})
    rng = np.random.default_rng(config.seed)
    count = len(split) if config.max_examples is None else min(config.max_examples, len(split))
    total_steps = config.epochs * -(-count // config.batch_size)
    started = last_report = time.perf_counter()
    averaged, averaged_epochs, step, losses = None, 0, 0, []
    out_of_time = False
    for epoch in range(config.epochs):
        order = rng.permutation(len(split))[:count]
        for start in range(0, count, config.batch_size):
            index = order[start:start + config.batch_size]
            batch = {k: v[index] for k, v in split.inputs.items()}
            if spec.sequence_mask:
                batch = trim_padding(batch, spec.sequence_mask)
            if augment is not None:
                batch = augment(batch, rng)
            inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
            loss = loss_fn(engine, inputs, torch.from_numpy(split.labels[index]))
            if not torch.isfinite(loss):
                raise VariantError(f"{what}: the loss became {loss.item()} at step {step} (epoch {epoch + 1}); "
                                   "training diverged", hint="lower the learning rate (training: {lr: ...})")
            engine.backward(loss)
            if after_backward is not None:
                after_backward(model)
            if config.schedule == "cosine":
                done = max(step / total_steps, (time.perf_counter() - started) / config.max_seconds)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            engine.step()
            step += 1
            losses.append(loss.item())
            now = time.perf_counter()
            if now - last_report > 10:
                progress(f"{what}: epoch {epoch + 1}/{config.epochs} step {step} loss {np.mean(losses[-20:]):.4f} "
                         f"({now - started:.0f}/{config.max_seconds:.0f} s)")
                last_report = now
            if now - started > config.max_seconds:
                out_of_time = True
                break
        if epoch >= config.epochs - config.swa_epochs:
            state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
            if averaged is None:
                averaged = state
            else:
                for k in averaged:
                    averaged[k] += (state[k] - averaged[k]) / (averaged_epochs + 1)
            averaged_epochs += 1
        if out_of_time:
            break
    if averaged is not None and averaged_epochs > 1:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in averaged.items()})
    progress(f"{what}: {step} steps in {time.perf_counter() - started:.0f} s, final loss {np.mean(losses[-20:]):.4f}"
             + (" (time budget reached)" if out_of_time else "")
             + (f", weights averaged over {averaged_epochs} epochs" if averaged_epochs > 1 else ""))
    return model.eval()


def shift_images(max_shift: int) -> Callable:
    """An `augment` for distillation: every float [batch, C, H, W] input moved by up to `max_shift` pixels in H and
    W (zero fill), one random shift per batch. A student learning from the teacher's outputs can learn on inputs
    no label was given for ("function matching"): the teacher labels each shifted image itself, which is worth
    far more to a student trained from scratch on a few thousand images than more epochs of the same ones."""

    def augment(batch: dict, rng) -> dict:
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        out = {}
        for name, array in batch.items():
            if array.ndim == 4 and array.dtype.kind == "f":
                shifted = np.zeros_like(array)
                h, w = array.shape[2:]
                shifted[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                    array[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
                array = shifted
            out[name] = array
        return out

    return augment


def cross_entropy_loss(output_index: int = 0) -> Callable:
    """Plain supervised fine-tuning on the metric output."""
    import torch

    def loss(model, inputs, labels):
        out = model(**inputs)
        logits = out if isinstance(out, torch.Tensor) else out[output_index]
        return torch.nn.functional.cross_entropy(logits, labels)

    return loss


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--prebuild"]:  # build DeepSpeed's CPU communication op once, at install time
        import torch

        spec = parse_spec({"name": "p", "factory": "a:b", "data": "a:b",
                           "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 2]}],
                           "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
                           "metric": {"output": "y"}}, where="prebuild")
        split = Split({"input": np.zeros((4, 2), np.float32)}, np.zeros(4, np.int64))
        train(torch.nn.Linear(2, 2), cross_entropy_loss(), split, spec, TrainConfig(batch_size=4))


def distillation_loss(teacher, metric_index: int, temperature: float = 2.0, alpha: float = 0.5,
                      feature_index: int | None = None, feature_weight: float = 0.0, projection=None,
                      cache_teacher: bool = True) -> Callable:
    """Response-based + feature-based knowledge distillation.

    loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)
           + feature_weight * ||projection(student feature) - teacher feature||^2   (mean over the batch)
    The squared error is summed over the feature's width, not averaged: for a unit-norm embedding it is 2 - 2 cos,
    on the scale of the other terms, where a per-element mean would be ~1/width of it.
    The feature is output `feature_index` of both models (an embedding); `projection` (a trained Linear) maps the
    student's width to the teacher's where they differ. The teacher runs without gradients, once per example
    (TeacherCache) unless `cache_teacher` is off (augmented inputs).
    """
    import torch
    import torch.nn.functional as F

    if cache_teacher:
        teacher_outputs = TeacherCache(teacher)
    else:  # augmented inputs are new every step: nothing to reuse

        def teacher_outputs(inputs):
            with torch.no_grad():
                return as_tuple(teacher(**inputs))

    def loss(model, inputs, labels):
        teacher_out = teacher_outputs(inputs)
        student_out = as_tuple(model(**inputs))
        s, t = student_out[metric_index], teacher_out[metric_index]
        soft = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
        total = alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(s, labels)
        if feature_index is not None and feature_weight > 0:
            feature = student_out[feature_index]
            if projection is not None:
                feature = projection(feature)
            error = (feature - teacher_out[feature_index]).pow(2).flatten(1).sum(1).mean()
            total = total + feature_weight * error
        return total

    return loss


def as_tuple(out) -> tuple:
    import torch

    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


class TeacherCache:
    """The teacher's outputs per training example, computed once per process and shared by every variant trained
    from the same teacher (pruned, svd, qat and distilled all distil from fp32): later variants skip the teacher's
    forward pass, about a sixth of a MiniLM training step here, and get that many more steps in their budget.

    Examples are keyed by content (each input row without its trailing zeros, so the padding a batch happens to
    have does not matter), the teacher by a hash of its weights. The teacher must be in eval mode: its output for
    an example must not depend on the batch it came in.
    """

    _stores: dict = {}  # teacher weights hash -> {example key: tuple of output rows}

    def __init__(self, teacher):
        self.teacher = teacher.eval()
        self.store = TeacherCache._stores.setdefault(weights_hash(teacher), {})

    def __call__(self, inputs: dict) -> tuple:
        import torch

        arrays = {name: value.numpy() for name, value in inputs.items()}
        keys = [example_key(a[row] for a in arrays.values()) for row in range(len(next(iter(arrays.values()))))]
        missing = [row for row, key in enumerate(keys) if key not in self.store]
        if missing:
            with torch.no_grad():
                out = as_tuple(self.teacher(**{name: value[missing] for name, value in inputs.items()}))
            for i, row in enumerate(missing):
                self.store[keys[row]] = tuple(o[i].clone() for o in out)
        rows = [self.store[key] for key in keys]
        return tuple(torch.stack([r[n] for r in rows]) for n in range(len(rows[0])))


def example_key(rows) -> bytes:
    """A digest of one example's input rows, each without its trailing zeros (padding)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        flat = row.reshape(-1)
        nonzero = np.flatnonzero(flat)
        digest.update(flat[:nonzero[-1] + 1 if len(nonzero) else 0].tobytes())
        digest.update(b"|")
    return digest.digest()


def weights_hash(model) -> str:
    import hashlib

    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_output_index(spec, name: str | None = None) -> int | None:
    """Index of the output matched by the feature loss: `name`, or the first float output that is not the metric's."""
    names = [t.name for t in spec.outputs]
    if name is not None:
        if name not in names:
            raise VariantError(f"feature_output `{name}` is not an output of the model ({names})")
        return names.index(name)
    return next((i for i, t in enumerate(spec.outputs)
                 if t.name != spec.metric.output and t.dtype.startswith("float")), None)


def recovery_loss(context, temperature: float = 2.0, alpha: float = 0.5) -> Callable:
    """What pruned, svd and qat fine-tune with: distillation from the unchanged model, logits and features, so the
    changed model keeps computing what the original did (not only the labels)."""
    spec = context.spec
    metric_index = [t.name for t in spec.outputs].index(spec.metric.output)
    feature_index = feature_output_index(spec)
    return distillation_loss(context.teacher.eval(), metric_index, temperature, alpha, feature_index,
                             1.0 if feature_index is not None else 0.0)
