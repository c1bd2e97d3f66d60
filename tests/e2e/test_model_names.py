"""Every served model, a combined variant included, is reached by the stock clients with no kit code: tritonclient
HTTP and gRPC as installed, and curl. A combined variant is built as `pruned+int8` and served as `digits_pruned-int8`
(builder/core/names.py); with `+` in the name, stock tritonclient.http sent `%2B` and Triton 2.51 answered "not found"."""

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.pipeline.build import Gates, build_variant
from builder.core.names import model_name
from client.triton import _protocol_module

pytestmark = pytest.mark.e2e

COMBINED = "pruned+int8"
QUICK_TRAINING = {"epochs": 1, "batch_size": 64, "lr": 0.001, "max_seconds": 5}


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    """A repository of the session's fp32 models and digits `pruned+int8`, on its own server: {server, models}."""
    from builder.serving.server import EmbeddedServer, free_port

    repository = tmp_path_factory.mktemp("names") / "model_repository"
    for name in ("digits_fp32", "tiny_fp32"):
        shutil.copytree(built["repository"] / name, repository / name)
    digits = built["specs"]["digits"]
    quick = dataclasses.replace(digits, training=QUICK_TRAINING, variants={
        name: {k: v for k, v in options.items() if k not in ("train_seconds", "train_epochs")}
        for name, options in digits.variants.items()})
    entry = build_variant(quick, COMBINED, repository, built["artifacts"], command="tests", gates=Gates(force=True),
                          eval_limit=100)
    assert entry["triton_model"] == model_name("digits", COMBINED) == "digits_pruned-int8"
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        yield {"server": server, "models": sorted(p.name for p in repository.iterdir())}


def inputs_for(model: str) -> dict:
    if model.startswith("tiny"):
        return {"tokens": np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int64)}
    return {"image": np.full((1, 1, 28, 28), 20.0, dtype=np.float32)}


def test_the_kit_no_longer_patches_tritonclient():
    import urllib.parse

    import tritonclient.http._client

    _protocol_module("http")
    assert tritonclient.http._client.quote is urllib.parse.quote


@pytest.mark.parametrize("stock", [httpclient, grpcclient], ids=["http", "grpc"])
def test_stock_client_reaches_every_model(served, stock):
    url = served["server"].http_url if stock is httpclient else served["server"].grpc_url
    client = stock.InferenceServerClient(url.split("://", 1)[1])
    try:
        for model in served["models"]:
            assert client.is_model_ready(model), model
            tensors = []
            for name, array in inputs_for(model).items():
                tensors.append(stock.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                                                else "INT64"))
                tensors[-1].set_data_from_numpy(array)
            assert client.infer(model, tensors).as_numpy("logits").shape[0] == 1, model
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reaches_every_model(served):
    url = served["server"].http_url
    for model in served["models"]:
        ready = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/v2/models/{model}/ready"],
                               capture_output=True, text=True, timeout=30)
        assert ready.stdout == "200", (model, ready.stdout)
        array = inputs_for(model)
        name, values = next(iter(array.items()))
        body = json.dumps({"inputs": [{"name": name, "shape": list(values.shape),
                                       "datatype": "FP32" if values.dtype == np.float32 else "INT64",
                                       "data": values.flatten().tolist()}]})
        answer = subprocess.run(["curl", "-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                                 f"{url}/v2/models/{model}/infer"], capture_output=True, text=True, timeout=30)
        outputs = {o["name"]: o for o in json.loads(answer.stdout)["outputs"]}
        assert outputs["logits"]["shape"][0] == 1, (model, answer.stdout[:200])
