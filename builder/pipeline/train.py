"""The one trainer: fine-tuning, distillation and QAT all run through DeepSpeed's engine.

Here DeepSpeed runs on its CPU accelerator, in one process or in several under DeepSpeed's launcher (which sets
RANK/WORLD_SIZE/...; builder/pipeline/processes.py): each process trains on its shard of every batch (`epoch_batches`), the
engine all-reduces the gradients, and the stop decisions (time cap, a NaN loss) are all-reduced too, so every rank
stops at the same step with the same weights (checked at the end). Known traps handled: without the launcher
DeepSpeed looks for MPI unless the rendezvous variables are set (set here when absent, with an in-memory process
group); the optimizer is a torch AdamW handed
to the engine, because `"AdamW"` in DeepSpeed's config triggers a long FusedAdam JIT build; its shm communication
op is JIT-built once per machine (`make install` builds it ahead: `python -m builder.pipeline.train --prebuild`).

Reproducible: a budget is a number of epochs or of optimizer steps, never of seconds, and every source of
randomness (torch, numpy, random, the batch order, dropout) is seeded, so the same build on the same machine gives
the same weights. `max_seconds` is only a safety cap: a run that reaches it stops there, and its facts
(`stopped_by_time_cap`) say so for the build record and summary. Progress is printed every few seconds; a NaN/inf
loss stops the variant with a clear error. Optional stochastic weight averaging of the end-of-epoch weights of the
last `swa_epochs` epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.data import Split, trim_padding
from ..core.errors import ConfigError, VariantError, unknown_name
from ..core.spec import parse_spec
from . import processes

DEFAULT_CAP_SECONDS = 1800.0
LENGTH_GROUP = 50  # batches per length-sorted chunk


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The budget is `steps` optimizer steps when set, else `epochs` passes over the train split
    (`max_examples` of it per pass when set). `max_seconds` is a safety cap, not a budget. `batch_size` is per
    process (DeepSpeed's micro batch): N processes take batches of N x batch_size, so an epoch is N times fewer
    steps, and a budget in steps sees N times the examples."""

    epochs: int = 1
    steps: int | None = None  # exactly this many optimizer steps (over as many passes as it takes); wins over epochs
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_seconds: float = DEFAULT_CAP_SECONDS  # safety cap: a run that reaches it stops, and is reported as cut short
    max_examples: int | None = None  # per epoch; None: the whole split
    swa_epochs: int = 0
    # "cosine": the learning rate decays to 0 along a cosine over the planned steps; for students trained from
    # scratch. "constant": for short fine-tunes of trained weights.
    schedule: str = "constant"
    seed: int = 0
    # with the spec's sequence_mask: each epoch's shuffled order is cut into chunks of LENGTH_GROUP batches, each
    # sorted by length, and the batches shuffled again, so a batch carries little padding (random batches of
    # Rotten Tomatoes snippets were about half padding); the batches are still random, their lengths similar
    length_grouped: bool = True
    # torch intra-op threads while training (restored after); None: torch's default, the cores. A small model
    # gains little from a second thread, and on a busy machine a team of threads waits for its slowest member at
    # every op: the digits student trained ~10x faster at 1 thread than at 2 under a load of ~10 on 2 cores.
    # Float sums depend on it, so a fixed count also fixes the result across machines with other core counts.
    threads: int | None = None
    # every this many steps, and at the end, the model's validation metric is measured, and the run ends with the
    # best of those checkpoints (the earliest of equals): the schedule can then be long enough to converge without
    # its last step being the one that ships. None: the last step's weights
    select_every: int | None = None
    # what a checkpoint is scored by: "accuracy" (the spec's metric on validation), "agreement" (top-1 agreement
    # with the teacher on validation: a student that answers as its teacher does), or "both" (their mean)
    select_by: str = "accuracy"

    def check(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"training: select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.select_every is not None and (not isinstance(self.select_every, int) or self.select_every < 1):
            raise ConfigError(f"training: select_every must be a positive integer, got {self.select_every!r}")
        if self.select_every and self.swa_epochs:
            raise ConfigError("training: select_every picks one checkpoint, swa_epochs averages several; use one")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"training: threads must be a positive integer, got {self.threads!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_seconds <= 0:
            raise ConfigError(f"training: epochs, batch_size, lr and max_seconds must be positive, got {self}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"training: steps must be a positive integer, got {self.steps!r}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"training: max_examples must be a positive integer, got {self.max_examples!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"training: schedule must be `constant` or `cosine`, got `{self.schedule}`")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ConfigError(f"training: swa_epochs must be between 0 and epochs ({self.epochs}), got {self.swa_epochs}")
        if self.swa_epochs and self.steps is not None:
            raise ConfigError("training: swa_epochs averages end-of-epoch weights; it needs a budget in epochs, "
                              f"not steps (steps: {self.steps})", hint="drop `steps` or `swa_epochs`")

    def planned_steps(self, examples: int, world: int = 1) -> int:
        """Optimizer steps this run is meant to take on a split of `examples` examples, by `world` processes."""
        if self.steps is not None:
            return self.steps
        return self.epochs * self.steps_per_epoch(examples, world)

    def steps_per_epoch(self, examples: int, world: int = 1) -> int:
        count = examples if self.max_examples is None else min(self.max_examples, examples)
        return -(-count // (self.batch_size * world))


SELECT_BY = ("accuracy", "agreement", "both")


@dataclass(frozen=True)
class TrainingOverrides:
    """A variant's own training budget and learning rate, over the model spec's `training` section; the Config of
    every trained variant extends this, so the options are declared once and read the same way everywhere.

    A budget replaces the spec's budget as a whole: `train_epochs` alone clears the spec's `steps`, `train_steps`
    wins over any epochs. `train_seconds` is the safety cap (TrainConfig.max_seconds), not a budget.
    """

    train_epochs: int | None = None  # overrides training.epochs (and clears training.steps)
    train_steps: int | None = None  # overrides training.steps
    train_lr: float | None = None  # overrides training.lr
    train_seconds: float | None = None  # overrides training.max_seconds, the safety cap
    # overrides training.schedule: students trained from scratch want `cosine`, fine-tunes of trained weights `constant`
    train_schedule: str | None = None
    train_threads: int | None = None  # overrides training.threads
    train_select_every: int | None = None  # overrides training.select_every (checkpoint selection on validation)
    train_select_by: str | None = None  # overrides training.select_by (accuracy, agreement with the teacher, both)

    def check(self) -> None:
        for name in ("train_epochs", "train_steps", "train_threads", "train_select_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise VariantError(f"{self._variant()}: {name} must be a positive integer, got {value!r}")
        for name in ("train_lr", "train_seconds"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise VariantError(f"{self._variant()}: {name} must be a positive number, got {value!r}")
        if self.train_select_by not in (None, *SELECT_BY):
            raise VariantError(f"{self._variant()}: train_select_by must be one of {', '.join(SELECT_BY)}, "
                               f"got {self.train_select_by!r}")
        if self.train_schedule not in (None, "constant", "cosine"):
            raise VariantError(f"{self._variant()}: train_schedule must be `constant` or `cosine`, "
                               f"got {self.train_schedule!r}")

    def training_options(self) -> dict:
        """These overrides as TrainConfig fields."""
        options = {}
        if self.train_epochs is not None:
            options.update(epochs=self.train_epochs, steps=None)
        if self.train_steps is not None:
            options["steps"] = self.train_steps
        if self.train_lr is not None:
            options["lr"] = self.train_lr
        if self.train_seconds is not None:
            options["max_seconds"] = self.train_seconds
        if self.train_schedule is not None:
            options["schedule"] = self.train_schedule
        if self.train_threads is not None:
            options["threads"] = self.train_threads
        if self.train_select_every is not None:
            options["select_every"] = self.train_select_every
        if self.train_select_by is not None:
            options["select_by"] = self.train_select_by
        return options

    def _variant(self) -> str:
        return type(self).__module__.rsplit(".", 1)[-1].replace("_", "-")


def train_config(spec, overrides: TrainingOverrides | dict | None = None) -> TrainConfig:
    """The spec's `training` section, then a variant's own overrides (TrainingOverrides, or TrainConfig fields).
    Raises ConfigError for an unknown field (with a close-match hint) or an out-of-range value."""
    if isinstance(overrides, TrainingOverrides):
        overrides = overrides.training_options()
    options = {**getattr(spec, "training", {}), **(overrides or {})}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        err = unknown_name("training option", unknown[0], known)
        raise ConfigError(f"training: {err}", hint=err.hint)
    config = TrainConfig(**options)
    config.check()
    return config


def seed_everything(seed: int) -> None:
    """Seed every generator a build draws from (torch, numpy's global one, random) and make torch prefer
    deterministic kernels: the same build on the same machine then gives the same weights. On CPU, torch's kernels
    are deterministic for a fixed thread count, so this costs nothing measurable here."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _rendezvous() -> None:
    """Under a launcher (WORLD_SIZE set): join its process group (processes.init). Outside it: one process, its
    process group on an in-memory store. A TCP rendezvous on a port picked here could lose that port to another
    process between picking and binding (EADDRINUSE, seen on this shared machine); DeepSpeed skips its own init
    when a group exists, and needs the variables only so that it does not go looking for MPI."""
    import torch.distributed as dist

    if "WORLD_SIZE" in os.environ:
        processes.init()
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def train(model, loss_fn: Callable, split, spec, config: TrainConfig, progress: Callable[[str], None] = print,
          what: str = "training", augment: Callable | None = None, after_backward: Callable | None = None,
          validate: Callable | None = None):
    """Train `model` in place on `split` and return it in eval mode; see run_training."""
    return run_training(model, loss_fn, split, spec, config, progress, what, augment, after_backward, validate)[0]


def run_training(model, loss_fn: Callable, split, spec, config: TrainConfig, progress: Callable[[str], None] = print,
                 what: str = "training", augment: Callable | None = None,
                 after_backward: Callable | None = None, validate: Callable | None = None) -> tuple:
    """Train `model` in place on `split`; `loss_fn(model, inputs: dict of tensors, labels: tensor) -> scalar`.
    `augment(batch: dict of arrays, rng) -> batch` changes each batch first (e.g. `shift_images`).
    `after_backward(model)` runs between each backward pass and optimizer step, on the gradients (e.g. a
    sparsity regularizer that adds its own gradient, as Torch-Pruning's GroupNormPruner.regularize does).
    `validate(model) -> float` (higher is better, the model in eval mode) scores the checkpoints that
    `config.select_every` asks for (CheckpointSelection); it is required then.

    Several processes (a launcher's WORLD_SIZE): every rank must call this with the same model, split and config;
    each trains on its shard of every batch, and all stop at the same step (the time cap and a NaN loss are
    decided by all of them together). Raises VariantError when the ranks end with different weights.

    Returns (the trained model in eval mode, facts): facts is a JSON-able dict of the run (steps taken and planned,
    epochs, batch size per process, processes, effective batch size, seconds, whether the time cap cut it short,
    final loss, the weights' hash) for the build record.
    Raises VariantError when the loss becomes NaN or infinite.
    """
    import torch

    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        model, facts = _run_training(model, loss_fn, split, spec, config, progress, what, augment, after_backward,
                                     validate)
    finally:
        torch.set_num_threads(previous)
    return model, facts | {"threads": config.threads or previous}


def _run_training(model, loss_fn, split, spec, config, progress, what, augment, after_backward,
                  validate) -> tuple:
    import torch

    _rendezvous()
    seed_everything(config.seed)
    rank, world = processes.rank(), processes.world_size()
    engine, optimizer = _engine(model, config, what)
    # one generator, the same on every rank: all draw the same batches (and augmentations), each takes its shard
    rng = np.random.default_rng(config.seed)
    count = len(split) if config.max_examples is None else min(config.max_examples, len(split))
    per_epoch = config.steps_per_epoch(len(split), world)
    total_steps = config.planned_steps(len(split), world)
    epochs = -(-total_steps // per_epoch)
    started = last_report = time.perf_counter()
    offset = processes.clock_offset()
    averaged, averaged_epochs, step, losses = None, 0, 0, []
    out_of_time = False
    lengths = split.inputs[spec.sequence_mask].sum(axis=1) if spec.sequence_mask and config.length_grouped else None
    selection = CheckpointSelection(config.select_every, validate, what) if config.select_every else None
    for epoch in range(epochs):
        for index in epoch_batches(rng, len(split), count, config.batch_size, lengths, rank, world):
            if step >= total_steps:
                break
            # the cap is checked before each step after the first: a run always takes one step
            over_time = step > 0 and time.perf_counter() - started + offset > config.max_seconds
            loss = loss_fn(engine, _batch(split, index, spec, augment, rng),
                           torch.from_numpy(split.labels[index]))
            out_of_time = _stop_for_all_ranks(loss, over_time, what, step, epoch)
            if out_of_time:
                break
            engine.backward(loss)
            if after_backward is not None:
                after_backward(model)
            if config.schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
            engine.step()
            step += 1
            losses.append(loss.item())
            if selection is not None and (step % selection.every == 0 or step == total_steps):
                selection.score(model, step, progress)
            now = time.perf_counter()
            if now - last_report > 10:
                progress(f"{what}: epoch {epoch + 1}/{epochs} step {step}/{total_steps} loss "
                         f"{np.mean(losses[-20:]):.4f} ({now - started:.0f} s, cap {config.max_seconds:.0f} s)")
                last_report = now
        if epoch >= epochs - config.swa_epochs and not out_of_time:
            averaged = _running_average(averaged, averaged_epochs, model)
            averaged_epochs += 1
        if out_of_time:
            break
    if averaged is not None and averaged_epochs > 1:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in averaged.items()})
    if selection is not None:
        selection.finish(model, step, progress)
    facts = _run_facts(model, what, config, selection, losses, step=step, total_steps=total_steps,
                       per_epoch=per_epoch, count=count, seconds=time.perf_counter() - started,
                       out_of_time=out_of_time, averaged_epochs=averaged_epochs, progress=progress)
    return model.eval(), facts


def _engine(model, config: TrainConfig, what: str) -> tuple:
    """(DeepSpeed engine, its AdamW optimizer) over `model`'s trainable parameters, in train mode."""
    import logging

    import deepspeed
    import torch

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
        "train_micro_batch_size_per_gpu": config.batch_size, "gradient_accumulation_steps": 1,
        "steps_per_print": 10 ** 9, "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0,
        "wall_clock_breakdown": False})
    # the kit's torch is the CPU build, so DeepSpeed's accelerator is its CPU one even on a GPU machine; a CUDA
    # build of torch would place the model on a GPU while batches, teachers and the export stay on the CPU
    if getattr(engine, "device", torch.device("cpu")).type != "cpu":
        raise VariantError(f"{what}: DeepSpeed placed the model on {engine.device}; the kit's trainer runs on CPU "
                           "ranks only", hint="install the CPU build of torch (`make install`) or set "
                           "DS_ACCELERATOR=cpu")
    return engine, optimizer


def _batch(split, index, spec, augment: Callable | None, rng) -> dict:
    """The examples at `index` as tensors: padding trimmed to the longest, then augmented."""
    import torch

    batch = {k: v[index] for k, v in split.inputs.items()}
    if spec.sequence_mask:
        batch = trim_padding(batch, spec.sequence_mask)
    if augment is not None:
        batch = augment(batch, rng)
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def _stop_for_all_ranks(loss, over_time: bool, what: str, step: int, epoch: int) -> bool:
    """Whether the time cap stops the run at this step; raises VariantError when the loss is not finite. Decided
    by all ranks at once (one MAX all-reduce): a rank that stopped alone would leave the others waiting in the
    gradient all-reduce."""
    import torch

    finite = bool(torch.isfinite(loss))
    diverged, out_of_time = processes.any_rank([not finite, over_time])
    if diverged:
        rank, world = processes.rank(), processes.world_size()
        where = "" if world == 1 else f" on rank {rank}" if not finite else " on another rank"
        raise VariantError(f"{what}: the loss became {loss.item() if not finite else 'non-finite'} at step "
                           f"{step} (epoch {epoch + 1}){where}; training diverged",
                           hint="lower the learning rate (training: {lr: ...})")
    return out_of_time


def _running_average(averaged: dict | None, count: int, model) -> dict:
    """The mean of `count` earlier states (`averaged`) and the model's state now (weight averaging, SWA)."""
    state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    if averaged is None:
        return state
    for k in averaged:
        averaged[k] += (state[k] - averaged[k]) / (count + 1)
    return averaged


def _run_facts(model, what: str, config: TrainConfig, selection, losses: list, *, step: int, total_steps: int,
               per_epoch: int, count: int, seconds: float, out_of_time: bool, averaged_epochs: int,
               progress: Callable[[str], None]) -> dict:
    """The record's facts of a finished run, checked equal on every rank, and its one progress line."""
    rank, world = processes.rank(), processes.world_size()
    weights = weights_hash(model)
    hashes = processes.gather(weights)
    if len(set(hashes)) > 1:  # the engine's gradient all-reduce did not happen, or a rank trained differently
        raise VariantError(f"{what}: the {world} processes ended with different weights ({hashes}): their "
                           "gradients were not all-reduced", hint="run every rank with the same spec and command")
    # every rank's loss is its shard's: the record's is their mean
    final_loss = float(np.mean(processes.gather(float(np.mean(losses[-20:])))))
    facts = {"steps": step, "planned_steps": total_steps, "epochs": round(step / per_epoch, 2),
             "batch_size": config.batch_size, "processes": world, "effective_batch_size": config.batch_size * world,
             "examples_per_epoch": count, "seconds": round(seconds, 1), "max_seconds": config.max_seconds,
             "stopped_by_time_cap": out_of_time, "final_loss": round(final_loss, 4),
             "seed": config.seed, "swa_epochs_averaged": averaged_epochs if averaged_epochs > 1 else 0,
             "steps_per_second": round(step / seconds, 2) if seconds > 0 else None, "weights_hash": weights}
    if selection is not None:
        facts |= selection.facts()
    message = (f"{what}: {step}/{total_steps} steps in {seconds:.0f} s, final loss {facts['final_loss']:.4f}"
               + (f" ({world} processes, batch {config.batch_size} each, {config.batch_size * world} in all)"
                  if world > 1 else "")
               + (f" - CUT SHORT by the {config.max_seconds:.0f} s time cap at step {step} of {total_steps}: this "
                  "model is not the recipe's (raise train_seconds or lower the budget)" if out_of_time else "")
               + (f", weights averaged over {averaged_epochs} epochs" if averaged_epochs > 1 else ""))
    progress(message)
    if world > 1 and rank != 0:  # the build is silent on these ranks: one line per run says where each stopped
        # one write: the ranks share the launcher's stdout, and print() would write the newline apart
        sys.stdout.write(f"[rank {rank}/{world}] {message}; weights {weights}\n")
        sys.stdout.flush()
    return facts


class CheckpointSelection:
    """Checkpoint selection on validation: `score` measures the model at a step and keeps a copy of its weights
    when they beat every earlier checkpoint; `finish` loads the best. Every rank scores the same weights on the
    same split, so all keep the same checkpoint."""

    def __init__(self, every: int, validate: Callable | None, what: str):
        if validate is None:
            raise VariantError(f"{what}: select_every needs a validation score, and this variant passes none",
                               hint="drop select_every from this variant's options")
        self.every, self.validate = every, validate
        self.scores: dict[int, float] = {}
        self.best_step, self.best_state = None, None

    def score(self, model, step: int, progress: Callable[[str], None]) -> None:
        value = float(self.validate(model.eval()))
        model.train()
        self.scores[step] = value
        if self.best_step is None or value > self.scores[self.best_step]:
            self.best_step = step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        progress(f"  step {step}: validation {value:.4f} (best {self.scores[self.best_step]:.4f} at step "
                 f"{self.best_step})")

    def finish(self, model, step: int, progress: Callable[[str], None]) -> None:
        if step not in self.scores:  # cut short by the time cap between two checkpoints
            self.score(model, step, progress)
        if self.best_step != step:
            model.load_state_dict(self.best_state)
            progress(f"  kept the checkpoint of step {self.best_step} (validation {self.scores[self.best_step]:.4f})")

    def facts(self) -> dict:
        return {"selected_step": self.best_step,
                "validation_by_step": {str(k): round(v, 4) for k, v in self.scores.items()}}


def epoch_batches(rng, size: int, count: int, batch_size: int, lengths: np.ndarray | None = None, rank: int = 0,
                  world: int = 1) -> list:
    """This rank's batches (index arrays) of one epoch of `count` examples drawn without replacement from `size`.
    With `lengths`: grouped by length (see TrainConfig.length_grouped). Depends only on `rng`'s state, `rank` and
    `world`, never on how the ranks are scheduled.

    Every rank draws the same epoch: batches of `world * batch_size`, each dealt out round-robin (example i of a
    batch to rank i % world), so a step's shards are disjoint, together they are the batch one process would take
    with `world * batch_size`, and length-grouped shards have similar lengths. When `count` is not a multiple of
    `world`, the first examples of the epoch's order are repeated to make it one (as torch's DistributedSampler
    pads), so that every rank has an example at every step."""
    order = rng.permutation(size)[:count]
    if len(order) % world:
        order = np.concatenate([order, order[:world - len(order) % world]])
    total = len(order)
    group = batch_size * world
    if lengths is None:
        batches = [order[start:start + group] for start in range(0, total, group)]
    else:
        chunk = group * LENGTH_GROUP
        batches = []
        for start in range(0, total, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(part[i:i + group] for i in range(0, len(part), group))
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [batch[rank::world] for batch in batches]


def fine_tune(model, context, overrides: TrainingOverrides | dict, what: str, loss_fn: Callable | None = None,
              augment: Callable | None = None, after_backward: Callable | None = None):
    """The one fine-tune call of every trained variant: train `model` on the spec's train split with the spec's
    `training` section and the variant's `overrides`, by `loss_fn` (default: recovery_loss, distillation from
    context.teacher). The run's facts go to context.notes["training"][what] for the build record. Returns the
    trained model in eval mode."""
    spec = context.spec
    config = train_config(spec, overrides)
    validate = None
    if config.select_every:
        validate = checkpoint_score(context, config.select_by)
    model, facts = run_training(model, loss_fn or recovery_loss(context), context.splits[spec.train_split], spec,
                                config, context.progress, what, augment, after_backward, validate)
    context.notes.setdefault("training", {})[what] = facts
    return model


def checkpoint_score(context, select_by: str) -> Callable:
    """The score CheckpointSelection keeps the best of, on the validation split: the spec's metric, the top-1
    agreement with context.teacher (its answers computed once), or their mean."""
    from ..core.evaluate import agreement_top1, score
    from .measure import torch_outputs

    spec = context.spec
    validation = context.splits[spec.validation_split]

    def accuracy(outputs) -> float:
        return score(spec.metric, outputs, validation.labels)

    if select_by == "accuracy":
        return lambda m: accuracy(torch_outputs(m, spec, validation))
    if context.teacher is None:
        raise VariantError(f"select_by: {select_by} needs a teacher to agree with, and this variant has none",
                           hint="select_by: accuracy")
    teacher = torch_outputs(context.teacher.eval(), spec, validation)

    def scored(model) -> float:
        outputs = torch_outputs(model, spec, validation)
        agreement = agreement_top1(spec.metric, outputs, teacher, validation.labels)
        return agreement if select_by == "agreement" else (agreement + accuracy(outputs)) / 2

    return scored


def shift_images(max_shift: int, per_example: bool = False) -> Callable:
    """An `augment` for distillation: every float [batch, C, H, W] input moved by up to `max_shift` pixels in H and
    W (zero fill), one random shift per batch (`per_example`: one per example, more views per step). A student
    learning from the teacher's outputs can learn on inputs no label was given for ("function matching"): the
    teacher labels each shifted image itself, which is worth far more to a student trained from scratch on a few
    thousand images than more epochs of the same ones."""

    def shift(array, dy, dx):
        shifted = np.zeros_like(array)
        h, w = array.shape[-2:]
        shifted[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            array[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return shifted

    def augment(batch: dict, rng) -> dict:
        size = len(next(iter(batch.values())))
        moves = rng.integers(-max_shift, max_shift + 1, size=(size, 2) if per_example else 2)
        out = {}
        for name, array in batch.items():
            if array.ndim == 4 and array.dtype.kind == "f":
                array = (np.stack([shift(a, dy, dx) for a, (dy, dx) in zip(array, moves)]) if per_example
                         else shift(array, *moves))
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


def rank0_weights(model):
    """`model` with rank 0's weights on every rank; alone, `model` unchanged. Only when the ranks' weight hashes
    differ (a factory that is not deterministic, a cached teacher only rank 0 has read) are rank 0's weights sent
    to the others."""
    if processes.several() and len(set(processes.gather(weights_hash(model)))) > 1:
        model.load_state_dict(processes.stage(processes.DECIDED, lambda: model.state_dict()))
    return model


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


def prebuild() -> int:
    """Build DeepSpeed's CPU communication op once, at install time (`python -m builder.pipeline.train --prebuild`)."""
    import torch

    spec = parse_spec({"name": "p", "factory": "a:b", "data": "a:b",
                       "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 2]}],
                       "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
                       "metric": {"output": "y"}}, where="prebuild")
    split = Split({"input": np.zeros((4, 2), np.float32)}, np.zeros(4, np.int64))
    train(torch.nn.Linear(2, 2), cross_entropy_loss(), split, spec, TrainConfig(batch_size=4))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--prebuild"]:
        from ..core.handler import run_command

        sys.exit(run_command(prebuild))
