"""`svd`: truncated SVD of Linear layers, W (n x m) ~ U_k S_k V_k^T as two Linear layers (m -> k -> n), then a
short fine-tune.

A layer is factored only when rank k reduces its MACs, k < n*m / (n + m) (the break-even rank); otherwise it stays
dense and the record says why. The rank comes from retained energy (the smallest k whose squared singular values
sum to `energy` of the total) or, by default, as `rank_ratio` x the break-even rank. Layers with fewer than
`min_features` inputs or outputs (classifier heads) are left alone. The fine-tune distils from the unfactored
model (logits and features).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import VariantError
from ..train import TrainingOverrides, fine_tune

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    rank_ratio: float = 0.5
    energy: float | None = None
    min_features: int = 64

    def check(self) -> None:
        super().check()
        if self.energy is None and not 0 < self.rank_ratio < 1:
            raise VariantError(f"svd: rank_ratio must be in (0, 1): a fraction of the break-even rank, got {self.rank_ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise VariantError(f"svd: energy must be in (0, 1], got {self.energy}")


def break_even_rank(n: int, m: int) -> float:
    return n * m / (n + m)


def choose_rank(singular_values, n: int, m: int, config: Config) -> int:
    if config.energy is not None:
        energy = (singular_values ** 2).cumsum(0) / (singular_values ** 2).sum()
        return int((energy < config.energy).sum().item()) + 1
    return max(1, int(config.rank_ratio * break_even_rank(n, m)))


def factor(linear, rank: int):
    """nn.Linear -> nn.Sequential(Linear(m, k, no bias), Linear(k, n)) holding the rank-k approximation."""
    import torch

    u, s, vh = torch.linalg.svd(linear.weight.data.float(), full_matrices=False)
    root = s[:rank].sqrt()
    first = torch.nn.Linear(linear.in_features, rank, bias=False)
    second = torch.nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    first.weight.data = (root[:, None] * vh[:rank]).contiguous()
    second.weight.data = (u[:, :rank] * root[None, :]).contiguous()
    if linear.bias is not None:
        second.bias.data = linear.bias.data.clone()
    return torch.nn.Sequential(first, second)


def apply(model, context, config: Config):
    import copy

    import torch

    model = copy.deepcopy(model)
    factored, skipped = {}, {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            full = f"{name}.{child_name}" if name else child_name
            n, m = child.out_features, child.in_features
            if min(n, m) < config.min_features:
                continue
            s = torch.linalg.svdvals(child.weight.data.float())
            rank = choose_rank(s, n, m, config)
            if rank >= break_even_rank(n, m):
                skipped[full] = f"rank {rank} >= break-even {break_even_rank(n, m):.0f}: no MACs saved"
                continue
            setattr(module, child_name, factor(child, rank))
            factored[full] = {"shape": [n, m], "rank": rank}
    if not factored:
        raise VariantError("svd: no Linear layer can be factored with fewer MACs at these settings",
                           hint="lower svd.energy or svd.rank_ratio in the model spec's variants section")
    context.notes["svd_factored"] = factored
    context.notes["svd_skipped"] = skipped
    context.progress(f"svd: factored {len(factored)} Linear layers, left {len(skipped)} dense")
    return fine_tune(model, context, config, "svd fine-tune")
