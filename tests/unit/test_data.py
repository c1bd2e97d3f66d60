import numpy as np

from builder.core.artifacts import load_splits, save_split
from builder.core.data import Split, trim_padding
from builder.core.spec import load_spec
from tests.conftest import TINY_SPEC


def test_trim_padding_cuts_to_the_longest_example():
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    batch = trim_padding({"input_ids": mask * 7, "attention_mask": mask, "other": np.zeros((2, 3))}, "attention_mask")
    assert batch["attention_mask"].shape == (2, 3) and batch["input_ids"].shape == (2, 3)
    assert batch["other"].shape == (2, 3)


def test_spread_takes_examples_across_the_split():
    split = Split({"x": np.arange(100)[:, None]}, np.arange(100))
    picked = split.spread(5)
    assert picked.labels.tolist() == [0, 25, 50, 74, 99]
    assert split.spread(1000) is split


def test_splits_are_written_once_and_reused(tmp_path):
    spec = load_spec(TINY_SPEC)
    first = load_splits(spec, tmp_path)
    assert set(first) == {"train", "validation", "test"}
    # change the cache: a second load must return the cached split, not call the data function again
    save_split(Split(first["test"].inputs, first["test"].labels * 0 + 2), tmp_path / "data" / "test.npz")
    assert (load_splits(spec, tmp_path)["test"].labels == 2).all()
