"""No small request makes the server allocate big (docs/security.md): a request of under 200 bytes declaring about
20 GB (digits: a fixed-shape image) or 10^9 tokens (the tiny text model: a variable axis) gets a 4xx /
INVALID_ARGUMENT on every port, the server's memory (tritonserver, stubs, front: sampled every 5 ms) stays within
100 MB, and the server stays ready. Before the front, the HTTP one took the server past 15 GB and ended it."""

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from builder.pipeline.build import build_variant
from builder.core.spec import load_spec
from builder.serving.front import FRONT_HEADER
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.tritonconfig import ServingConfig
from loadtests.oversize import GROWTH_LIMIT, huge_shapes, oversize_rows
from tests.conftest import FIXTURES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    repository = tmp_path_factory.mktemp("oversize") / "model_repository"
    build_variant(load_spec(FIXTURES / "tiny_text" / "tiny_text.yaml"), "fp32", repository, built["artifacts"],
                  ServingConfig(), command="tests")
    shutil.copytree(built["repository"] / "digits_fp32", repository / "digits_fp32")
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as running:
        yield running


def test_the_declared_shapes_are_huge(server):
    assert huge_shapes(server.model_config("tinytext_fp32")) == {"input_ids": [1, 10**9],
                                                                 "attention_mask": [1, 10**9]}
    image = huge_shapes(server.model_config("digits_fp32"))["image"]
    assert image[:3] == [1, 1, 28] and 19e9 < np.prod(image, dtype=np.float64) * 4 <= 20e9


def test_a_small_request_declaring_a_huge_tensor_is_refused_on_every_port(server):
    rows = oversize_rows(server, ["digits_fp32", "tinytext_fp32"])
    for row in rows:
        print(f"{row['model']:<14} {row['port']:<20} {row['body_bytes']:>4} B -> {row['status']} in "
              f"{row['seconds'] * 1000:.1f} ms, memory +{row['growth_bytes'] / 1e6:.1f} MB: {row['message']}")
    assert [(r["model"], r["port"]) for r in rows] == [
        (m, p) for m in ("digits_fp32", "tinytext_fp32") for p in ("HTTP (front)", "gRPC", "Triton HTTP, no key")]
    for row in rows:
        assert row["body_bytes"] < 200
        assert row["growth_bytes"] < GROWTH_LIMIT, row
        assert row["ready"], row
        assert row["seconds"] < 2, row  # a real 20 GB allocation took 1.8 s before it failed, 8 GB 18 s
    by_port = {(r["model"], r["port"]): r for r in rows}
    front = by_port[("tinytext_fp32", "HTTP (front)")]
    assert front["status"] == "400" and "input `input_ids` declares shape [1, 1000000000]" in front["message"]
    assert by_port[("digits_fp32", "HTTP (front)")]["status"] == "400"
    assert by_port[("digits_fp32", "gRPC")]["status"] == "INVALID_ARGUMENT"
    assert "unexpected shape for input 'image'" in by_port[("digits_fp32", "gRPC")]["message"]
    assert by_port[("tinytext_fp32", "gRPC")]["status"] == "INVALID_ARGUMENT"
    assert "input byte size mismatch" in by_port[("tinytext_fp32", "gRPC")]["message"]
    for model in ("digits_fp32", "tinytext_fp32"):
        behind = by_port[(model, "Triton HTTP, no key")]
        assert behind["status"] == "403" and f"expecting header '{FRONT_HEADER}'" in behind["message"]


def test_triton_http_listens_on_loopback_only_and_answers_the_front_alone(server):
    assert server.triton_http_port not in (server.http_port, server.grpc_port, server.metrics_port)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{server.triton_http_port}/v2/health/ready", timeout=10)
    assert e.value.code == 403


@pytest.mark.parametrize("binary", [True, False])
def test_stock_http_clients_are_answered_through_the_front(server, binary):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    image = np.full((3, 1, 28, 28), 10.0, dtype=np.float32)
    entry = httpclient.InferInput("image", list(image.shape), "FP32")
    entry.set_data_from_numpy(image, binary_data=binary)
    logits = client.infer("digits_fp32", [entry]).as_numpy("logits")
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    ids = np.array([[2, 4, 5, 3]], dtype=np.int64)
    inputs = []
    for name in ("input_ids", "attention_mask"):
        inputs.append(httpclient.InferInput(name, list(ids.shape), "INT64"))
        inputs[-1].set_data_from_numpy(ids if name == "input_ids" else np.ones_like(ids), binary_data=binary)
    assert client.infer("tinytext_fp32", inputs, request_compression_algorithm="gzip").as_numpy("logits").shape == (1, 3)
    assert client.is_server_ready() and client.get_model_metadata("digits_fp32")["name"] == "digits_fp32"


def test_a_bad_value_still_gets_the_backends_one_line_through_the_front(server):
    body = json.dumps({"inputs": [{"name": n, "shape": [1, 3], "datatype": "INT64", "data": v} for n, v in
                                  (("input_ids", [2, 10**12, 3]), ("attention_mask", [1, 1, 1]))]}).encode()
    request = urllib.request.Request(f"{server.http_url}/v2/models/tinytext_fp32/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 400
    assert "1000000000000 at [0, 1] is outside the allowed 0..15" in json.loads(e.value.read())["error"]
