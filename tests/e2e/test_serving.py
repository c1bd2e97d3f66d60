"""Both demo models and a user's model, built by the kit and served by the real embedded Triton server."""

import asyncio

import numpy as np
import pytest

from builder.core.artifacts import load_splits
from builder.demo import compare_accuracy
from builder.core.evaluate import onnx_predictor, onnx_session
from builder.serving.repository import latest_model_file
from client import AsyncTritonClient

pytestmark = pytest.mark.e2e

# (model, split, examples sent through the server)
ACCURACY_CASES = [("digits", "test", 400), ("digits", "sklearn_digits", 300), ("minilm", "test", 300),
                  ("tiny", "test", 32)]


def test_every_model_is_ready(server):
    states = {m.name: m.state for m in server.models()}
    assert states == {"digits_fp32": "READY", "minilm_fp32": "READY", "tiny_fp32": "READY"}


def test_health_list_and_metadata(client):
    assert client.is_live() and client.is_ready() and client.is_model_ready("minilm_fp32")
    assert {m["name"] for m in client.models()} == {"digits_fp32", "minilm_fp32", "tiny_fp32"}
    meta = client.metadata("minilm_fp32")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("logits", [-1, 2]), ("embedding", [-1, 384])]
    assert client.metadata("digits_fp32")["inputs"][0]["shape"] == [-1, 1, 28, 28]


@pytest.mark.parametrize("model,split_name,examples", ACCURACY_CASES)
def test_served_accuracy_equals_in_process(client, built, model, split_name, examples):
    spec = built["specs"][model]
    split = load_splits(spec, built["artifacts"] / model)[split_name].spread(examples)
    name = f"{model}_fp32"
    result = compare_accuracy(client, name, spec, split, latest_model_file(built["repository"], name))
    assert result["served"] == result["in_process"]
    assert result["served"] > {"digits": 0.9, "minilm": 0.65, "tiny": 0.0}[model] or split_name == "sklearn_digits"


def test_served_outputs_match_in_process_outputs(client, built):
    spec = built["specs"]["minilm"]
    batch = load_splits(spec, built["artifacts"] / "minilm")["test"].spread(4).inputs
    served = client.infer("minilm_fp32", batch)
    local = onnx_predictor(onnx_session(latest_model_file(built["repository"], "minilm_fp32")))(batch)
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(served[name], local[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, rtol=1e-5)


def test_recorded_build_accuracy_matches_the_served_model(client, built):
    spec = built["specs"]["digits"]
    split = load_splits(spec, built["artifacts"] / "digits")["test"]
    result = compare_accuracy(client, "digits_fp32", spec, split, latest_model_file(built["repository"], "digits_fp32"))
    assert result["served"] == built["records"]["digits_fp32"]["accuracy"]["test"]


def test_asyncio_grpc_client(server):
    image = np.full((3, 1, 28, 28), 10.0, dtype=np.float32)

    async def run():
        async with AsyncTritonClient(server.grpc_url) as client:
            assert await client.is_ready()
            results = await asyncio.gather(*(client.infer("digits_fp32", {"image": image}) for _ in range(8)))
        return results

    results = asyncio.run(run())
    assert all(r["logits"].shape == (3, 10) for r in results)
    assert all(np.array_equal(r["logits"], results[0]["logits"]) for r in results)
