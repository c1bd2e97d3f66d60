"""Labelled data splits. They are cached on disk once (builder/core/artifacts.py: `load_splits`) so every variant is
measured on exactly the same examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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



def padded_tokens(encodings) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask` of a `tokenizers` encode_batch result, right-padded with 0 to the longest."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}
