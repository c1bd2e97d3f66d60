"""The metrics of builder/core/evaluate.py on hand-made outputs: token accuracy skips IGNORE'd positions, the
nearest-neighbour accuracy never matches an example with itself, the paired standard error clusters tokens by their
example, and token outputs of trimmed batches are padded back to the split's width."""

import numpy as np
import pytest

from builder.core.data import Split
from builder.core.evaluate import IGNORE, agreement_top1, paired_drop_se, run_split, score
from builder.core.spec import MetricSpec

ACCURACY, KNN = MetricSpec(output="y"), MetricSpec(output="y", name="knn_accuracy")


def one_hot(classes: list, width: int = 3) -> np.ndarray:
    return np.eye(width)[np.array(classes)]


def test_token_accuracy_scores_only_labelled_positions():
    labels = np.array([[IGNORE, 0, 1, IGNORE], [IGNORE, 2, IGNORE, IGNORE]])
    predicted = one_hot([[2, 0, 0, 2], [0, 2, 1, 1]])  # right at (0,1) and (1,2-the-label); wrong at (0,2)
    assert score(ACCURACY, {"y": predicted}, labels) == pytest.approx(2 / 3)
    other = one_hot([[1, 0, 1, 1], [1, 1, 0, 0]])
    assert agreement_top1(ACCURACY, {"y": predicted}, {"y": other}, labels) == pytest.approx(1 / 3)


def test_knn_accuracy_is_leave_one_out():
    # two tight pairs of classes 0 and 1, and one lone example of class 1 nearest the class-0 pair
    embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [0.9, 0.3]])
    labels = np.array([0, 0, 1, 1, 1])
    assert score(KNN, {"y": embeddings}, labels) == pytest.approx(4 / 5)  # with itself it would be 5 / 5
    scaled = {"y": embeddings * np.array([[3.0], [0.5], [2.0], [1.0], [7.0]])}  # cosine: lengths do not matter
    assert agreement_top1(KNN, {"y": embeddings}, scaled, labels) == 1.0


def test_token_drop_se_counts_examples_not_tokens():
    labels = np.zeros((100, 10), dtype=np.int64)
    reference = {"y": one_hot(np.zeros((100, 10), dtype=int))}
    worse = np.zeros((100, 10), dtype=int)
    worse[:10] = 1  # ten whole examples wrong: their ten tokens move together
    se = paired_drop_se(ACCURACY, reference, {"y": one_hot(worse)}, labels)
    per_example = np.r_[np.ones(10), np.zeros(90)]  # the same drop, one unit per example
    assert se == pytest.approx(per_example.std(ddof=1) / np.sqrt(100) * 100, abs=0.01)
    per_token = np.repeat(per_example, 10)  # as if the 1,000 tokens were independent: ~sqrt(10) too small
    assert se > 2 * per_token.std(ddof=1) / np.sqrt(1000) * 100


def test_token_outputs_of_trimmed_batches_are_padded_back():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    split = Split({"ids": mask.copy(), "mask": mask}, np.zeros((3, 4), dtype=np.int64))

    def predict(batch):  # per-token logits and one pooled output, on what the batch was trimmed to
        return {"tokens": np.ones(batch["mask"].shape + (2,)), "pooled": np.ones((len(batch["mask"]), 5))}

    out = run_split(predict, split, "mask", batch_size=1, sequence_outputs=("tokens",))
    assert out["tokens"].shape == (3, 4, 2) and out["pooled"].shape == (3, 5)
    assert out["tokens"][0, :2].all() and not out["tokens"][0, 2:].any() and not out["tokens"][2, 1:].any()
