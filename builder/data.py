"""Labelled data splits, cached on disk once so every variant is measured on exactly the same examples."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, unknown_name


@dataclass(frozen=True)
class Split:
    """Model inputs (name -> array with the batch on axis 0) and one integer label per example."""

    inputs: dict
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int | None) -> "Split":
        if count is None or count >= len(self):
            return self
        return Split({k: v[:count] for k, v in self.inputs.items()}, self.labels[:count])

    def spread_index(self, count: int | None) -> np.ndarray:
        """Indices of `count` examples evenly spread over the split (splits may be ordered, e.g. by length)."""
        if count is None or count >= len(self):
            return np.arange(len(self))
        return np.linspace(0, len(self) - 1, count).round().astype(int)

    def spread(self, count: int | None) -> "Split":
        index = self.spread_index(count)
        if len(index) == len(self):
            return self
        return Split({k: v[index] for k, v in self.inputs.items()}, self.labels[index])

    def batches(self, size: int, sequence_mask: str | None = None):
        """Yield (inputs, labels) of `size` examples; with `sequence_mask`, trim right padding to the batch's longest."""
        for start in range(0, len(self), size):
            batch = {k: v[start:start + size] for k, v in self.inputs.items()}
            if sequence_mask:
                batch = trim_padding(batch, sequence_mask)
            yield batch, self.labels[start:start + size]


def trim_padding(batch: dict, sequence_mask: str) -> dict:
    """Cut axis 1 of every input padded like `sequence_mask` down to the longest unpadded example."""
    mask = batch[sequence_mask]
    padded = mask.shape[1]
    length = max(int(mask.sum(axis=1).max()), 1)
    if length == padded:
        return batch
    return {k: v[:, :length] if v.ndim > 1 and v.shape[1] == padded else v for k, v in batch.items()}


def save_split(split: Split, path: pathlib.Path) -> None:
    arrays = {f"input.{k}": v for k, v in split.inputs.items()}
    np.savez(path, labels=split.labels, **arrays)


def read_split(path: pathlib.Path) -> Split:
    with np.load(path) as data:
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        return Split(inputs, data["labels"])


def load_splits(spec, workdir: pathlib.Path) -> dict[str, Split]:
    """The spec's splits, from the cache in `workdir/data` or, the first time, from its data function."""
    from .spec import resolve_callable

    folder = workdir / "data"
    index = folder / "splits.json"
    if index.is_file():
        names = json.loads(index.read_text())
        return {name: read_split(folder / f"{name}.npz") for name in names}
    splits = resolve_callable(spec.data, spec.source)(workdir)
    if not isinstance(splits, dict) or not all(isinstance(s, Split) for s in splits.values()):
        raise ConfigError(f"{spec.source}: data function `{spec.data}` must return a dict of name -> builder.data.Split")
    for role in (spec.train_split, spec.validation_split, spec.calibration_split, *spec.evaluate):
        if role not in splits:
            raise unknown_name("split", role, splits, hint=f"the data function `{spec.data}` returned these")
    expected = {t.name for t in spec.inputs}
    for name, split in splits.items():
        if set(split.inputs) != expected:
            raise ConfigError(f"{spec.source}: split `{name}` has inputs {sorted(split.inputs)}, the spec declares {sorted(expected)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        save_split(split, folder / f"{name}.npz")
    index.write_text(json.dumps(sorted(splits)))  # written last: its presence means the cache is complete
    return splits
