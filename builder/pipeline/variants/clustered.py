"""`clustered`: non-uniform weight quantization by k-means clustering (Deep Compression's weight sharing).

Every weight matrix/kernel with at least `min_weights` elements (Linear, Conv, Embedding; not biases or norms) is
clustered on its own into `clusters` centroids (scikit-learn's KMeans, 1-D, linear initialisation over the
weight range, which Han et al. found keeps the rare large weights), and each weight is replaced by its centroid.
With `fine_tune`, the centroids are then trained with the indices fixed (each centroid receives the summed gradient
of its weights), by distillation from the unclustered model, within the usual training budget; every other
parameter (biases, norms, small tensors) stays frozen, so it ships exactly as the model had it.

What it buys, honestly: the exported ONNX is an ordinary dense float model (it serves everywhere, at fp32's
latency, since the kernels still multiply float32), but its weights take at most `clusters` values per tensor, so
it compresses far better than fp32's under gzip/zstd; and `clustered.npz` beside the variant in the artifacts
(not in the Triton repository) holds what has to be shipped: 4-bit indices (2 per byte, for <= 16 clusters; 1
byte for <= 256) plus centroids, and the unclustered tensors as float32. The record has both sizes and fp32's.

It combines with int8 (`clustered+int8`): int8 requantizes the clustered weights per channel, so each channel
keeps at most `clusters` distinct int8 levels and its file compresses better than plain int8's; the speed is
int8's. Latency of `clustered` alone is fp32's by construction.
"""

from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass

import numpy as np

from ...core.errors import VariantError
from ..measure import gzip_bytes
from ..train import TrainingOverrides, fine_tune, recovery_loss

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = "option"  # with fine_tune (default on)
# it buys size, not speed (dense fp32 kernels): the build's speed gate only rejects it when it is slower than fp32
# beyond the measurement margin
SIZE_ONLY = True
FIT_SAMPLE = 200_000  # weights per tensor k-means is fitted on; all of them are then assigned to the nearest centroid


@dataclass(frozen=True)
class Config(TrainingOverrides):  # and the training budget
    clusters: int = 16  # centroids per tensor; 16 = 4-bit indices
    min_weights: int = 256  # smaller tensors stay float
    fine_tune: bool = True  # train the shared centroids (indices fixed) by distillation from the unclustered model
    temperature: float = 2.0
    alpha: float = 0.5

    def check(self) -> None:
        super().check()
        if not 2 <= self.clusters <= 256:
            raise VariantError(f"clustered: clusters must be between 2 and 256 (8-bit indices), got {self.clusters}")
        if self.min_weights < 1:
            raise VariantError(f"clustered: min_weights must be >= 1, got {self.min_weights}")


def kmeans_1d(values: np.ndarray, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids sorted ascending [k] float32, index of each value's centroid [n] uint8). Exact zeros keep a
    centroid of exactly 0 (pruned weights stay pruned: Deep Compression clusters the surviving weights). Fewer
    distinct values than `clusters`: those values are the centroids."""
    from sklearn.cluster import KMeans

    flat = values.reshape(-1).astype(np.float64)
    distinct = np.unique(flat)
    if len(distinct) <= clusters:
        centroids = distinct
    else:
        zeros = bool((flat == 0).any())
        nonzero = flat[flat != 0] if zeros else flat
        rng = np.random.default_rng(seed)
        sample = nonzero if len(nonzero) <= FIT_SAMPLE else rng.choice(nonzero, FIT_SAMPLE, replace=False)
        k = clusters - zeros
        init = np.linspace(nonzero.min(), nonzero.max(), k).reshape(-1, 1)
        fitted = KMeans(k, init=init, n_init=1, max_iter=100, random_state=seed).fit(sample.reshape(-1, 1))
        centroids = np.unique(np.append(fitted.cluster_centers_.reshape(-1), [0.0] if zeros else []))
    centroids = np.sort(centroids)
    # nearest centroid of every value: centroids are sorted, so the midpoints between them split the line
    index = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    if (flat == 0).any():
        index[flat == 0] = int(np.flatnonzero(centroids == 0)[0])
    return centroids.astype(np.float32), index.astype(np.uint8)


def clustered_tensors(model, min_weights: int) -> list[tuple[str, object, str]]:
    """(qualified name, module, attribute) of every weight that gets clustered."""
    import torch

    found = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.numel() >= min_weights:
                found.append((f"{name}.weight" if name else "weight", module, "weight"))
    return found


class SharedCentroids:
    """A torch parametrization: weight = centroids[index], centroids trainable, index fixed."""

    @staticmethod
    def make(centroids: np.ndarray, index: np.ndarray, shape):
        import torch

        class _Shared(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.centroids = torch.nn.Parameter(torch.from_numpy(centroids.copy()))
                self.register_buffer("index", torch.from_numpy(index.astype(np.int64)).reshape(shape))
                self.register_buffer("movable", torch.from_numpy((centroids != 0).astype(np.float32)))

            def forward(self, original):  # the original weight is ignored: the centroids are the parameters
                return (self.centroids * self.movable)[self.index]  # a zero centroid stays zero (pruned weights)

        return _Shared()


def cluster_model(model, config: Config):
    """A copy of `model` with its weights replaced by per-tensor centroids, parametrized so training moves only the
    centroids; and {name: (centroids, index)}. Raises VariantError when no tensor is large enough."""
    from torch.nn.utils import parametrize

    student = copy.deepcopy(model)
    for parameter in student.parameters():  # only the centroids train: the rest ships exactly as the model had it
        parameter.requires_grad_(False)
    targets = clustered_tensors(student, config.min_weights)
    if not targets:
        raise VariantError(f"clustered: no weight tensor has >= {config.min_weights} elements",
                           hint="lower variants.clustered.min_weights")
    codebooks = {}
    for name, module, attribute in targets:
        weight = getattr(module, attribute).detach()
        centroids, index = kmeans_1d(weight.numpy(), config.clusters)
        codebooks[name] = (centroids, index.reshape(weight.shape))
        parametrize.register_parametrization(module, attribute,
                                             SharedCentroids.make(centroids, index, tuple(weight.shape)))
    return student, codebooks


def bake(student) -> None:
    """Replace every parametrized weight by its current value (centroids[index]), a plain Parameter again."""
    from torch.nn.utils import parametrize

    for module in list(student.modules()):
        if parametrize.is_parametrized(module):
            for attribute in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)


def pack_indices(index: np.ndarray, clusters: int) -> np.ndarray:
    """uint8 indices as shipped: two per byte (4 bits each) when clusters <= 16, else one per byte."""
    flat = index.reshape(-1).astype(np.uint8)
    if clusters > 16:
        return flat
    if len(flat) % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] << 4) | flat[1::2]


def write_compressed(path: pathlib.Path, student, codebooks: dict, clusters: int) -> int:
    """Write the shippable form (packed indices + centroids per clustered tensor, float32 for the rest) as a
    compressed .npz; returns its size in bytes."""
    arrays = {}
    for name, tensor in student.state_dict().items():
        if name in codebooks:
            centroids, index = codebooks[name]
            arrays[f"{name}.centroids"] = centroids
            arrays[f"{name}.indices"] = pack_indices(index, clusters)
            arrays[f"{name}.shape"] = np.array(index.shape, dtype=np.int64)
        else:
            arrays[name] = tensor.detach().numpy()
    np.savez_compressed(path, **arrays)
    return path.stat().st_size


def apply(model, context, config: Config):
    student, codebooks = cluster_model(model, config)
    clustered_weights = sum(index.size for _, index in codebooks.values())
    total = sum(p.numel() for p in model.parameters())
    context.progress(f"clustered: {len(codebooks)} tensors ({clustered_weights:,} of {total:,} weights) in "
                     f"{config.clusters} clusters each")
    if config.fine_tune:
        student = fine_tune(student, context, config, "clustered centroid fine-tune",
                            recovery_loss(context, config.temperature, config.alpha))
    bake(student)
    context.handoff["clustered"] = codebooks  # for finish, on rank 0
    return student


def finish(student, context, config: Config):
    """Rank 0's part, once every rank trained: the compressed artifact and its facts."""
    codebooks = context.handoff.pop("clustered")
    clustered_weights = sum(index.size for _, index in codebooks.values())
    trained = {}  # the fine-tuned centroids, read back from the baked weights (indices unchanged)
    for name, (centroids, index) in codebooks.items():
        weight = student.state_dict()[name].numpy()
        values = np.zeros_like(centroids)
        for k in range(len(centroids)):
            hit = index == k
            values[k] = weight[hit][0] if hit.any() else centroids[k]
        trained[name] = (values, index)
    compressed = context.out / "clustered.npz"
    fp32_onnx = context.workdir / "fp32" / "model.onnx"
    context.notes["clustered"] = {
        "clusters": config.clusters, "tensors": len(codebooks), "clustered_weights": clustered_weights,
        "total_weights": sum(p.numel() for p in student.parameters()), "fine_tuned": config.fine_tune,
        "artifact": str(compressed), "artifact_bytes": write_compressed(compressed, student, trained, config.clusters),
        "fp32_onnx_gzip_bytes": gzip_bytes(fp32_onnx) if fp32_onnx.is_file() else None,
        "distinct_values_max": max(len(np.unique(student.state_dict()[n].numpy())) for n in codebooks),
    }
    return student
