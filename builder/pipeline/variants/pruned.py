"""`pruned`: structured pruning with Torch-Pruning, which really removes channels, attention heads and FFN neurons
(the exported graph has smaller tensors), then fine-tuning with distillation from the unpruned model to recover.

`ratio` is the fraction removed per layer: conv channels and hidden Linear neurons; for transformers, attention
heads (whole heads, via Torch-Pruning's head grouping; the attention modules' head counts are patched afterwards)
and FFN neurons. Widths that the model's outputs or its residual stream depend on are kept: embeddings, every
Linear that writes the embedding width, and the last Linear (the classifier). Importance: L2 magnitude (`l2`,
`l1`); `taylor`: first-order Taylor estimate of the loss change, |w x dL/dw| summed over each group, from the
gradients of the task loss of the fine-tuned model on TAYLOR_EXAMPLES training examples (Molchanov et al. 2019;
what a head or FFN unit does for this task, where magnitude only says how big its weights are); or `group-lasso`: a short sparse-training phase first (`sparse_epochs`, distillation from the unpruned model
plus Torch-Pruning's GroupNormPruner regularizer over the very groups it removes: each group's weights get the
extra gradient `sparse_reg` x gamma_g x w, gamma_g rising to 2^4 for the weakest groups, DepGraph's group-norm
sparse learning, which drives whole channel/head groups towards zero), then pruning at `ratio` by group L2 norm,
then the usual fine-tune.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ...core.errors import VariantError
from ..measure import fixed_batch
from ..train import TrainingOverrides, fine_tune, recovery_loss

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False
IMPORTANCES = ("l2", "l1", "taylor", "group-lasso")
TAYLOR_EXAMPLES = 512  # training examples whose loss gradients rank the groups (`taylor`)


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    ratio: float = 0.5
    importance: str = "l2"  # l2 | l1 weight magnitude | group-lasso (sparse training first, then L2 groups)
    sparse_epochs: int = 2  # group-lasso: epochs of sparse training before pruning
    sparse_reg: float = 1e-3  # group-lasso: regularization coefficient (GroupNormPruner's `reg`)
    temperature: float = 2.0
    alpha: float = 0.5

    def check(self) -> None:
        super().check()
        if not 0 < self.ratio < 1:
            raise VariantError(f"pruned: ratio must be in (0, 1), got {self.ratio}")
        if self.importance not in IMPORTANCES:
            raise VariantError(f"pruned: importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if self.sparse_epochs < 1 or self.sparse_reg <= 0:
            raise VariantError(f"pruned: sparse_epochs must be >= 1 and sparse_reg > 0, got {self.sparse_epochs}, "
                               f"{self.sparse_reg}")


def attention_modules(model):
    """HF-style self-attention modules: `num_attention_heads` with query/key/value Linears."""
    found = []
    for name, module in model.named_modules():
        if hasattr(module, "num_attention_heads"):
            if not all(hasattr(module, p) for p in ("query", "key", "value")):
                raise VariantError(f"pruned: attention layer `{name}` ({type(module).__name__}) has no separate "
                                   "query/key/value projections, so its heads cannot be pruned safely",
                                   hint="build the other variants; head pruning supports BERT-style attention")
            found.append(module)
    return found


def channel_summary(model) -> dict:
    import torch

    return {name: [m.in_channels, m.out_channels] if isinstance(m, torch.nn.Conv2d) else [m.in_features, m.out_features]
            for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def task_gradients(model, context) -> None:
    """Leave in every parameter's .grad the gradient of the task loss (cross-entropy of the metric's output) summed
    over TAYLOR_EXAMPLES training examples spread over the split: what TaylorImportance reads."""
    import torch
    import torch.nn.functional as F

    from ..train import as_tuple

    spec = context.spec
    metric_index = [t.name for t in spec.outputs].index(spec.metric.output)
    model.zero_grad()
    for batch, labels in context.splits[spec.train_split].spread(TAYLOR_EXAMPLES).batches(32, spec.sequence_mask):
        out = as_tuple(model(**{k: torch.from_numpy(v) for k, v in batch.items()}))
        F.cross_entropy(out[metric_index], torch.from_numpy(labels), reduction="sum").backward()


def apply(model, context, config: Config):
    import torch
    import torch_pruning as tp

    spec = context.spec
    student = copy.deepcopy(model).eval()
    example = {k: torch.from_numpy(v) for k, v in fixed_batch(spec, context.splits[spec.train_split], 2).items()}
    linears = [m for m in student.modules() if isinstance(m, torch.nn.Linear)]
    embeddings = [m for m in student.modules() if isinstance(m, torch.nn.Embedding)]
    heads = {}
    for attention in attention_modules(student):
        for projection in (attention.query, attention.key, attention.value):
            heads[projection] = attention.num_attention_heads
    # the residual stream keeps its width: no Linear that writes it (other than q/k/v, pruned by whole heads)
    widths = {e.embedding_dim for e in embeddings}
    ignored = embeddings + linears[-1:] + [m for m in linears if m.out_features in widths and m not in heads]
    before = channel_summary(student)
    settings = dict(pruning_ratio=config.ratio, ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(heads),
                    prune_head_dims=False, head_pruning_ratio=config.ratio,
                    output_transform=lambda out: out.sum() if isinstance(out, torch.Tensor) else sum(o.sum() for o in out))
    if config.importance == "taylor":
        importance = tp.importance.TaylorImportance()
    else:
        importance = tp.importance.MagnitudeImportance(p=1 if config.importance == "l1" else 2)
    if config.importance == "group-lasso":
        pruner = tp.pruner.GroupNormPruner(student, example, importance=importance, reg=config.sparse_reg, **settings)
        sparse = {**config.training_options(), "epochs": config.sparse_epochs, "steps": None}
        student = fine_tune(student, context, sparse, "group-lasso sparse training",
                            recovery_loss(context, config.temperature, config.alpha), after_backward=pruner.regularize)
        context.notes["group_lasso"] = {"sparse_epochs": config.sparse_epochs, "reg": config.sparse_reg}
    else:
        pruner = tp.pruner.MetaPruner(student, example, importance=importance, **settings)
    if config.importance == "taylor":
        task_gradients(student, context)
    try:
        pruner.step()
    except Exception as e:
        raise VariantError(f"pruned: Torch-Pruning could not prune this model: {e}") from e
    student.zero_grad(set_to_none=True)  # the ranking's gradients must not reach the first training step
    for attention in attention_modules(student):
        attention.num_attention_heads = pruner.num_heads[attention.query]
        attention.all_head_size = attention.query.out_features
    after = channel_summary(student)
    changed = {k: f"{before[k]} -> {after[k]}" for k in before if before[k] != after.get(k)}
    if not changed:
        raise VariantError("pruned: nothing could be pruned (every layer is protected or too small)")
    context.notes["pruned_layers"] = changed
    context.notes["pruned_heads"] = {f"layer {i}": a.num_attention_heads for i, a in enumerate(attention_modules(student))}
    context.progress(f"pruned: {len(changed)} layers narrowed, params "
                     f"{sum(p.numel() for p in model.parameters()):,} -> {sum(p.numel() for p in student.parameters()):,}")
    return fine_tune(student, context, config, "pruned fine-tune", recovery_loss(context, config.temperature, config.alpha))
