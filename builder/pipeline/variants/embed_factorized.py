"""`embed-factorized`: ALBERT's factorized embedding. The largest token-embedding table E (V x d) becomes a rank-r
table (V x r) followed by a projection (r x d, no bias), initialised from the truncated SVD E ~ U_r S_r V_r^T (the
table holds U_r S_r, the projection V_r^T), then a short fine-tune that distils from the unchanged model.

Parameters go from V*d to V*r + r*d, so r must stay below the break-even rank V*d / (V + d); at or above it the
variant refuses. The rank is `rank` when set, else the smallest r whose squared singular values reach `energy` of
the total. The lookup stays a Gather (now of r-wide rows) followed by one MatMul per token: a few MACs more per
token (r*d), a smaller file. The module name uses `_`; the variant, the spec's `variants:` key and the Triton
model use `embed-factorized`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import VariantError
from ..train import TrainingOverrides, fine_tune
from .svd import break_even_rank

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    energy: float = 0.9  # share of the table's squared singular values kept; used when `rank` is not set
    rank: int | None = None  # an explicit rank; overrides `energy`
    train_steps: int | None = 45  # a short fine-tune of the factors (was a 45 s budget, ~1 s per MiniLM step here)
    # the fine-tune adapts the two factors only: the rest of the network is already right, and training all of it
    # on a few dozen batches moved it away from fp32 (2.6 points lost, against 1.7 after even fewer steps)
    train_only_factors: bool = True

    def check(self) -> None:
        super().check()
        if self.rank is not None and self.rank < 1:
            raise VariantError(f"embed-factorized: rank must be >= 1, got {self.rank}")
        if not 0 < self.energy <= 1:
            raise VariantError(f"embed-factorized: energy must be in (0, 1], got {self.energy}")


def largest_embedding(model):
    """(parent module, attribute name, qualified name, nn.Embedding) of the embedding with the most parameters.

    Raises VariantError when the model has none, or when its weight is tied to another module (an LM head): the
    factorization would silently untie them."""
    import torch

    found = None
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Embedding) and (found is None or child.weight.numel() > found[3].weight.numel()):
                found = (parent, name, f"{parent_name}.{name}" if parent_name else name, child)
    if found is None:
        raise VariantError("embed-factorized: the model has no nn.Embedding to factorize")
    users = [n for n, p in model.named_parameters(remove_duplicate=False) if p is found[3].weight]
    if len(users) > 1:
        raise VariantError(f"embed-factorized: the weight of `{found[2]}` is tied to {users[1:]}; factorizing it "
                           "would untie them")
    return found


def choose_rank(singular_values, config: Config) -> int:
    """`config.rank`, or the smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    if config.rank is not None:
        return config.rank
    squares = singular_values.double() ** 2
    energy = squares.cumsum(0) / squares.sum()
    return min(int((energy < config.energy).sum().item()) + 1, len(singular_values))  # min: rounding at energy 1


def retained_energy(singular_values, rank: int) -> float:
    squares = singular_values.double() ** 2
    return float(squares[:rank].sum() / squares.sum())


def factor_embedding(embedding, rank: int, u=None, s=None, vh=None):
    """nn.Embedding(V, d) -> nn.Sequential(nn.Embedding(V, rank), nn.Linear(rank, d, bias=False)) holding the
    rank-`rank` truncated SVD (pass u, s, vh when already computed). Keeps padding_idx (its row gets no gradient)."""
    import torch

    if u is None:
        u, s, vh = torch.linalg.svd(embedding.weight.data.float(), full_matrices=False)
    table = torch.nn.Embedding(embedding.num_embeddings, rank, padding_idx=embedding.padding_idx)
    projection = torch.nn.Linear(rank, embedding.embedding_dim, bias=False)
    table.weight.data = (u[:, :rank] * s[None, :rank]).contiguous()
    projection.weight.data = vh[:rank].T.contiguous()  # Linear computes x @ weight.T = x @ V_r^T
    return torch.nn.Sequential(table, projection)


def factorize(model, config: Config):
    """A copy of `model` with its largest embedding factorized, and the facts for the build record.
    Raises VariantError when the rank saves no parameters."""
    import copy

    import torch

    config.check()
    model = copy.deepcopy(model)
    parent, attribute, name, embedding = largest_embedding(model)
    vocab, width = embedding.num_embeddings, embedding.embedding_dim
    if config.rank is not None and config.rank >= break_even_rank(vocab, width):  # refuse before an SVD
        raise_no_saving(name, vocab, width, config.rank, None)
    u, s, vh = torch.linalg.svd(embedding.weight.data.float(), full_matrices=False)
    rank = choose_rank(s, config)
    energy = retained_energy(s, rank)
    if rank >= break_even_rank(vocab, width):
        raise_no_saving(name, vocab, width, rank, energy)
    params_before = sum(p.numel() for p in model.parameters())
    setattr(parent, attribute, factor_embedding(embedding, rank, u, s, vh))
    return model, {
        "embedding": name, "vocab": vocab, "width": width, "rank": rank, "energy_retained": round(energy, 4),
        "break_even_rank": round(break_even_rank(vocab, width), 1),
        "embedding_params_before": vocab * width, "embedding_params_after": vocab * rank + rank * width,
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters())}


def raise_no_saving(name: str, vocab: int, width: int, rank: int, energy: float | None):
    kept = f" (keeping {energy:.1%} of the energy)" if energy is not None else ""
    raise VariantError(f"embed-factorized: rank {rank}{kept} for `{name}` ({vocab} x {width}) saves no parameters: "
                       f"{vocab} x {rank} + {rank} x {width} = {vocab * rank + rank * width:,} >= {vocab * width:,}; "
                       f"the break-even rank is {break_even_rank(vocab, width):.1f}",
                       hint="lower embed-factorized.energy or set a smaller embed-factorized.rank in the model "
                            "spec's variants section")


def apply(model, context, config: Config):
    model, facts = factorize(model, config)
    context.notes["embed-factorized"] = facts
    context.progress(f"embed-factorized: `{facts['embedding']}` {facts['vocab']} x {facts['width']} -> rank "
                     f"{facts['rank']} ({facts['energy_retained']:.1%} of the energy), embedding parameters "
                     f"{facts['embedding_params_before']:,} -> {facts['embedding_params_after']:,}")
    if config.train_only_factors:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in model.get_submodule(facts["embedding"]).parameters():
            parameter.requires_grad_(True)
    model = fine_tune(model, context, config, "embed-factorized fine-tune")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
