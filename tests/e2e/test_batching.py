"""Dynamic batching: requests really are batched, and batched answers equal unbatched ones."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from builder.core.artifacts import load_splits
from client import InferenceError, InvalidInputError, TritonClient

pytestmark = pytest.mark.e2e


def model_stats(client, model):
    stats = client.statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def concurrently(url, model, requests, workers=16):
    """Send each request from its own thread and client; return results (or the exception) in order."""
    def send(inputs):
        with TritonClient(url) as client:
            try:
                return client.infer(model, inputs)
            except Exception as e:  # returned, so one failure does not hide the others
                return e

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(send, requests))


def test_concurrent_requests_are_batched_and_equal_unbatched(server):
    rng = np.random.default_rng(1)
    requests = [{"tokens": rng.integers(0, 50, size=(1, 6), dtype=np.int64)} for _ in range(32)]
    with TritonClient(server.http_url) as client:
        alone = [client.infer("tiny_fp32", r)["logits"] for r in requests[:4]]  # one request per execution
        before = model_stats(client, "tiny_fp32")
        together = concurrently(server.http_url, "tiny_fp32", requests)
        after = model_stats(client, "tiny_fp32")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 32
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was batched"
    for single, batched in zip(alone, together[:4]):
        np.testing.assert_allclose(batched["logits"], single, rtol=1e-6, atol=1e-6)


def test_requests_of_different_lengths_in_one_batch_are_answered_correctly(server):
    rng = np.random.default_rng(2)
    requests = [{"tokens": rng.integers(0, 50, size=(2, length), dtype=np.int64)} for length in (3, 9, 3, 5, 9, 1) * 3]
    with TritonClient(server.grpc_url) as client:
        expected = [client.infer("tiny_fp32", r)["logits"] for r in requests]
    together = concurrently(server.grpc_url, "tiny_fp32", requests)
    for want, got in zip(expected, together):
        np.testing.assert_allclose(got["logits"], want, rtol=1e-6, atol=1e-6)


def test_minilm_texts_of_different_lengths_served_concurrently(server, built):
    spec = built["specs"]["minilm"]
    split = load_splits(spec, built["artifacts"] / "minilm")["test"].spread(12)
    requests = []
    for i in range(len(split)):  # one text per request, unpadded, so lengths differ
        length = int(split.inputs["attention_mask"][i].sum())
        requests.append({k: v[i:i + 1, :length] for k, v in split.inputs.items()})
    with TritonClient(server.grpc_url) as client:
        expected = [client.infer("minilm_fp32", r) for r in requests]
    together = concurrently(server.grpc_url, "minilm_fp32", requests, workers=12)
    for want, got in zip(expected, together):
        np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=1e-4, atol=1e-5)


def test_a_bad_request_fails_alone_in_its_batch(server):
    rng = np.random.default_rng(3)
    good = [{"tokens": rng.integers(0, 50, size=(1, 6), dtype=np.int64)} for _ in range(7)]
    bad = {"tokens": np.full((1, 6), 10_000, dtype=np.int64)}  # ids beyond the vocabulary: the backend's checks
    with TritonClient(server.http_url) as client:
        before = model_stats(client, "tiny_fp32")
        results = concurrently(server.http_url, "tiny_fp32", good[:3] + [bad] + good[3:], workers=8)
        after = model_stats(client, "tiny_fp32")
    assert isinstance(results[3], InvalidInputError)
    assert "input `tokens`: 10000 at [0, 0] is outside the allowed 0..49" in str(results[3])
    assert all(isinstance(r, dict) and r["logits"].shape == (1, 3) for i, r in enumerate(results) if i != 3)
    assert after[1] - before[1] < 8  # the good ones really shared an execution with the bad one
