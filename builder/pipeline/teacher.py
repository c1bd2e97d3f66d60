"""The model every variant starts from: the spec's factory model, or (fp32 `fine_tune: true`) that model fine-tuned
end to end on the train split, trained once and cached in the artifacts like the data splits.

The cache (`<workdir>/teacher/<key>.pt` + `<key>.json`) is keyed by the recipe: the factory, the resolved training
config (teacher_config) and a hash of the factory model's weights, so a change of any of them trains a new teacher and an unchanged
one is never trained twice. Several processes (builder/pipeline/processes.py): rank 0 decides whether the cache holds the
teacher, every rank fine-tunes it together, and only rank 0 writes it; every rank ends with rank 0's weights. The JSON holds the facts the build record reports: the fine-tune's run (steps, time
cap) and the accuracy of the frozen factory model (the old baseline) beside the fine-tuned one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Callable

from ..core.errors import VariantError
from ..core.files import atomic_write
from ..core.spec import ModelSpec, call_source
from . import processes
from .measure import torch_accuracy
from .processes import DECIDED, EVERY, MAIN, MAIN_FIRST
from .sources.onnxfile import OnnxFile
from .train import TrainConfig, cross_entropy_loss, rank0_weights, run_training, weights_hash
from .variants import steps


def teacher_options(spec: ModelSpec):
    """fp32's Config (fine_tune and its budget) from the spec."""
    return steps("fp32")[0].config(spec.variants)


TEACHER_SCHEDULE = "cosine"  # MiniLM, 200 steps at lr 1e-4: test 0.8158 with cosine decay, 0.7687 at a constant lr


def teacher_config(options) -> TrainConfig:
    """The fine-tune's recipe: TrainConfig's defaults (batch 32, seed 0) with a cosine-decaying learning rate and
    fp32's own train_* options. Not the spec's `training` section: that is the variants' recipe, and a change to it
    must not retrain the teacher every variant is measured against."""
    config = TrainConfig(schedule=TEACHER_SCHEDULE, **options.training_options())
    config.check()
    return config


def load_model(spec: ModelSpec, workdir: pathlib.Path, splits: dict, progress: Callable[[str], None] = print):
    """(model, facts): the factory's model, fine-tuned from the cache (or now, then cached) when the spec's fp32
    says `fine_tune`; facts is None without a fine-tune, else the JSON-able facts of the fine-tune."""
    # rank 0 first: a factory may fill a cache in `workdir` (minilm's head) that the others then read
    model = rank0_weights(processes.stage(MAIN_FIRST, lambda: call_source(spec, "factory", workdir)))
    options = teacher_options(spec)
    if not options.fine_tune:
        return model, None
    if isinstance(model, OnnxFile):
        raise VariantError(f"{spec.name}: fp32's fine_tune trains the PyTorch model, and an ONNX file has none",
                           hint=f"remove `fine_tune` from variants.fp32 in {spec.source}")
    import torch

    config = teacher_config(options)
    training = dataclasses.asdict(config)
    for field, default in (("threads", None), ("select_every", None), ("select_by", "accuracy")):
        if training[field] == default:  # the key of every recipe cached before the field existed
            del training[field]
    recipe = {"factory": spec.factory, "train_split": spec.train_split, "loss": "cross_entropy on " + spec.metric.output,
              "training": training, "base_weights": weights_hash(model)}
    key = hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(), digest_size=8).hexdigest()
    folder = workdir / "teacher"
    weights, facts_path = folder / f"{key}.pt", folder / f"{key}.json"
    cached = processes.stage(DECIDED, lambda: json.loads(facts_path.read_text())
                             if weights.is_file() and facts_path.is_file() else None)
    if cached is not None:
        progress(f"fine-tuned teacher: reusing {weights} (same recipe)")
        # rank 0 reads the weights, the others get them from it: they may not share its disk
        processes.stage(MAIN, lambda: model.load_state_dict(torch.load(weights, weights_only=True)))
        return rank0_weights(model).eval(), cached

    measured = [spec.validation_split, *[s for s in spec.evaluate if s != spec.validation_split]]
    progress(f"fine-tuned teacher: measuring the frozen factory model on {', '.join(measured)}")
    frozen = processes.stage(DECIDED, lambda: {name: round(torch_accuracy(model.eval(), spec, splits[name]), 4)
                                               for name in measured})
    plan = config.planned_steps(len(splits[spec.train_split]), processes.world_size())
    progress(f"fine-tuned teacher: {plan} steps of batch {config.batch_size} at lr {config.lr:g} "
             f"(cap {config.max_seconds:.0f} s), end to end on `{spec.train_split}`")
    metric_index = [t.name for t in spec.outputs].index(spec.metric.output)
    model, run = processes.stage(EVERY, lambda: run_training(
        model, cross_entropy_loss(metric_index), splits[spec.train_split], spec, config, progress, "teacher fine-tune"))
    tuned = processes.stage(DECIDED, lambda: round(torch_accuracy(model, spec, splits[spec.validation_split]), 4))
    facts = {"key": key, "recipe": recipe, "training": run, "frozen_accuracy": frozen,
             "fine_tuned_validation_accuracy": tuned, "validation_split": spec.validation_split}
    progress(f"fine-tuned teacher: {spec.validation_split} accuracy {frozen[spec.validation_split]:.4f} frozen -> "
             f"{tuned:.4f} fine-tuned")
    processes.stage(MAIN, lambda: save_teacher(model, facts, weights, facts_path))
    return model, facts


def save_teacher(model, facts: dict, weights: pathlib.Path, facts_path: pathlib.Path) -> None:
    """The fine-tuned teacher's weights, then its facts (last: they mark the cache entry complete)."""
    import torch

    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda f: torch.save(model.state_dict(), f))
    atomic_write(facts_path, json.dumps(facts, indent=2))
