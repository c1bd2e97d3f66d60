"""Dynamic batching: requests really are batched, and batched answers equal unbatched ones; texts padded to the
model's length buckets answer as unpadded ones and batch under a mixed-length load."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from builder.pipeline.build import build_variant
from builder.core.artifacts import load_splits
from builder.core.spec import load_spec
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.tritonconfig import ServingConfig
from client import InferenceError, InvalidInputError, TritonClient
from builder.core.artifacts import length_buckets, request_batches
from tests.conftest import FIXTURES

pytestmark = pytest.mark.e2e


def model_stats(client, model):
    stats = client.statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


STATS_SETTLE_S = 5.0


def settled_stats(client, model, inferences):
    """The model's statistics once they count at least `inferences` inferences: Triton adds an execution to its
    statistics just after sending its responses, so with 2 instances (minilm) the last one can still be missing
    when the client already has every answer. Polls, up to STATS_SETTLE_S; returns the last reading either way."""
    deadline = time.monotonic() + STATS_SETTLE_S
    stats = client.statistics(model)["model_stats"][0]
    while int(stats["inference_count"]) < inferences and time.monotonic() < deadline:
        time.sleep(0.01)
        stats = client.statistics(model)["model_stats"][0]
    return stats


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


# Length buckets (builder/core/artifacts.py, spec `length_buckets`): the same text padded to its bucket (ids 0, mask 0)
# must answer as it does unpadded. Padding changes the shapes ONNX Runtime computes on, so float sums run in
# another order: measured differences here were below 1e-6; the tolerance leaves a margin and is far below any
# change of answer (embedding values are ~0.05, logits ~1).
PADDING_ATOL = 1e-5


def test_minilm_answers_the_same_padded_to_its_bucket_and_unpadded(server, built):
    folder = built["artifacts"] / "minilm"
    buckets = length_buckets(folder)
    assert buckets == (16, 32, 64, 128, 256)  # the default: powers of two from 16 up to the tokenizer's 256
    unpadded = request_batches(folder, count=24, buckets=())
    padded = request_batches(folder, count=24)
    assert {r["input_ids"].shape[1] for r in padded} <= set(buckets)
    assert any(u["input_ids"].shape[1] not in buckets for u in unpadded)  # some really were padded
    with TritonClient(server.grpc_url) as client:
        for plain, bucketed in zip(unpadded, padded):
            want, got = client.infer("minilm_fp32", plain), client.infer("minilm_fp32", bucketed)
            for name in ("logits", "embedding"):
                np.testing.assert_allclose(got[name], want[name], atol=PADDING_ATOL, rtol=0)


@pytest.fixture(scope="module")
def tiny_text_server(tmp_path_factory):
    """The tiny_text fixture (a user's text model with its own tokenizer) built and served on its own."""
    root = tmp_path_factory.mktemp("tiny_text")
    spec = load_spec(FIXTURES / "tiny_text" / "tiny_text.yaml")
    entry = build_variant(spec, "fp32", root / "repository", root / "artifacts", ServingConfig(), command="tests")
    with EmbeddedServer(root / "repository", free_port(), free_port(), free_port()) as running:
        yield running, root / "artifacts" / spec.name, entry


def test_tiny_text_answers_the_same_padded_to_its_bucket_and_unpadded(tiny_text_server):
    running, folder, entry = tiny_text_server
    assert entry["length_buckets"] == [8]  # its tokenizer's maximum is 8, below the smallest default bucket
    unpadded = request_batches(folder, count=16, buckets=())
    padded = request_batches(folder, count=16)
    assert all(r["input_ids"].shape[1] == 8 for r in padded)
    assert any(u["input_ids"].shape[1] < 8 for u in unpadded)
    with TritonClient(running.http_url) as client:
        for plain, bucketed in zip(unpadded, padded):
            want, got = client.infer("tinytext_fp32", plain), client.infer("tinytext_fp32", bucketed)
            for name in ("logits", "embedding"):
                np.testing.assert_allclose(got[name], want[name], atol=PADDING_ATOL, rtol=0)


def test_mixed_length_texts_padded_to_buckets_batch_under_concurrent_load(server, built):
    folder = built["artifacts"] / "minilm"
    requests = request_batches(folder, count=48)
    lengths = {r["input_ids"].shape[1] for r in requests}
    assert len(lengths) >= 2, f"the texts fell into one bucket only ({lengths}): not a mixed-length load"
    with TritonClient(server.grpc_url) as client:
        earlier = model_stats(client, "minilm_fp32")[0]
        expected = [client.infer("minilm_fp32", r)["embedding"] for r in requests]
        settled_stats(client, "minilm_fp32", earlier + len(requests))
        before = model_stats(client, "minilm_fp32")
        together = concurrently(server.grpc_url, "minilm_fp32", requests, workers=16)
        settled_stats(client, "minilm_fp32", before[0] + len(requests))
        after = model_stats(client, "minilm_fp32")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(requests)
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was batched"
    for want, got in zip(expected, together):
        np.testing.assert_allclose(got["embedding"], want, atol=PADDING_ATOL, rtol=0)


# One request at a time should never wait in Triton's queue. With one instance, Triton 2.51's dynamic batcher left
# ~1-3 % of MiniLM's requests there for its 500 ms idle wait (docs/load-tests.md): 300 sequential requests then
# queue for seconds in all; one such wait alone is 400-500 ms.
SEQUENTIAL_REQUESTS = 300
SEQUENTIAL_QUEUE_BUDGET_MS = 250


def test_sequential_minilm_requests_never_wait_out_the_batchers_idle_timeout(server, built):
    inputs = {k: v[:1] for k, v in request_batches(built["artifacts"] / "minilm", count=1, tokens=32)[0].items()}
    with TritonClient(server.grpc_url) as client:
        prepared = client.prepare("minilm_fp32", inputs)
        earlier = model_stats(client, "minilm_fp32")[0]
        client.send(prepared)
        before = settled_stats(client, "minilm_fp32", earlier + 1)["inference_stats"]
        for _ in range(SEQUENTIAL_REQUESTS):
            client.send(prepared)
        after = settled_stats(client, "minilm_fp32",
                              int(before["success"]["count"]) + SEQUENTIAL_REQUESTS)["inference_stats"]
    count = int(after["success"]["count"]) - int(before["success"]["count"])
    queued_ms = (int(after["queue"]["ns"]) - int(before["queue"]["ns"])) / 1e6
    assert count == SEQUENTIAL_REQUESTS
    assert queued_ms < SEQUENTIAL_QUEUE_BUDGET_MS, (
        f"{count} one-at-a-time requests spent {queued_ms:.0f} ms in Triton's queue: some waited out the dynamic "
        "batcher's 500 ms idle timeout")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_prepared_request_answers_as_infer_and_fails_as_infer(server, protocol):
    rng = np.random.default_rng(4)
    inputs = {"tokens": rng.integers(0, 50, size=(2, 6), dtype=np.int64)}
    with TritonClient(server.http_url if protocol == "http" else server.grpc_url) as client:
        prepared = client.prepare("tiny_fp32", inputs)
        for _ in range(3):  # sent again and again, the same answer
            np.testing.assert_array_equal(client.send(prepared)["logits"], client.infer("tiny_fp32", inputs)["logits"])
        bad = client.prepare("tiny_fp32", {"tokens": np.full((1, 6), 10_000, dtype=np.int64)})
        with pytest.raises((InferenceError, InvalidInputError), match="input `tokens`: 10000 at \\[0, 0\\] is outside the allowed"):
            client.send(bad)
