"""Bad input values are refused before ONNX Runtime runs: HTTP 400 / gRPC INVALID_ARGUMENT with one line naming the
input, the bad value or size and the allowed range; other requests of the same batch are answered; the server
stays up. Over raw HTTP (urllib, Triton's binary tensor extension so NaN and inf travel) and the stock
tritonclient gRPC client, no kit code between.

Models: a user's text model (tests/fixtures/tiny_text, 16-token vocabulary, no position table) built here, the
session's digits (pixels 0..255) and MiniLM (512 positions) encoders.
"""

import json
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from builder.pipeline.build import build_variant
from builder.serving.server import EmbeddedServer, free_port
from builder.core.spec import load_spec
from builder.pipeline.torch2onnx import MAX_DYNAMIC_SIZE
from tests.conftest import FIXTURES
from tests.e2e.conftest import BATCHING

pytestmark = pytest.mark.e2e

TEXT = "tinytext_fp32"
IDS = np.array([[2, 4, 5, 3]], dtype=np.int64)  # [CLS] red green [SEP]


def text_request(ids, mask=None) -> dict:
    ids = np.asarray(ids, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)}


def image_request(value=None) -> dict:
    image = np.full((1, 1, 28, 28), 10.0, dtype=np.float32)
    if value is not None:
        image[0, 0, 3, 7] = value
    return {"image": image}


# (model, request, the one line the answer holds)
CASES = {
    "token id 10^12": (TEXT, text_request([[2, 10**12, 3]]),
                       "input `input_ids`: 1000000000000 at [0, 1] is outside the allowed 0..15"),
    "token id -5": (TEXT, text_request([[2, -5, 3]]), "input `input_ids`: -5 at [0, 1] is outside the allowed 0..15"),
    "longer than the export allows": (TEXT, text_request(np.full((1, MAX_DYNAMIC_SIZE + 1), 4)),
                                      f"`seq` (axis 1) is {MAX_DYNAMIC_SIZE + 1}, allowed 1..{MAX_DYNAMIC_SIZE}"),
    "600 tokens for MiniLM's 512 positions": ("minilm_fp32", text_request(np.full((1, 600), 1000)),
                                              "input `input_ids`: `seq` (axis 1) is 600, allowed 1..512"),
    "mask shaped differently from the ids": (TEXT, text_request(IDS, np.ones((1, 3))),
                                             "input `attention_mask` has shape [1, 3] but `input_ids` has [1, 4]"),
    "zero-length sequence": (TEXT, text_request(np.zeros((1, 0))), "`seq` (axis 1) is 0, allowed 1..4096"),
    "all-zero mask": (TEXT, text_request(IDS, np.zeros((1, 4))),
                      "input `attention_mask`: example 0 of the batch is all zeros"),
    "mask value 2": (TEXT, text_request(IDS, [[1, 1, 2, 1]]), "input `attention_mask`: 2 at [0, 2] is outside"),
    "NaN pixel": ("digits_fp32", image_request(np.nan), "input `image`: nan at [0, 0, 3, 7] is not a finite number"),
    "inf pixel": ("digits_fp32", image_request(np.inf), "input `image`: inf at [0, 0, 3, 7] is not a finite number"),
    "pixel 300": ("digits_fp32", image_request(300.0),
                  "input `image`: 300.0 at [0, 0, 3, 7] is outside the allowed 0..255"),
}


@pytest.fixture(scope="module")
def repository(built, tmp_path_factory):
    repository = tmp_path_factory.mktemp("validation") / "model_repository"
    spec = load_spec(FIXTURES / "tiny_text" / "tiny_text.yaml")
    # BATCHING: the text model waits up to 200 ms for company, so concurrent requests share a batch
    build_variant(spec, "fp32", repository, built["artifacts"], BATCHING, command="tests")
    for name in ("digits_fp32", "minilm_fp32"):
        shutil.copytree(built["repository"] / name, repository / name)
    return repository


@pytest.fixture(scope="module")
def server(repository):
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as running:
        yield running


@pytest.fixture(autouse=True)
def server_stays_up(server):
    yield
    assert http_infer(server, TEXT, text_request(IDS))[0] == 200
    assert http_infer(server, "digits_fp32", image_request())[0] == 200


def http_infer(server, model: str, inputs: dict) -> tuple[int, dict]:
    """POST /v2/models/<model>/infer with every input as binary data; (status, JSON answer or error)."""
    header = {"inputs": [{"name": name, "shape": list(array.shape), "datatype": np_to_triton_dtype(array.dtype),
                          "parameters": {"binary_data_size": array.nbytes}} for name, array in inputs.items()],
              "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}
    head = json.dumps(header).encode()
    body = head + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    request = urllib.request.Request(f"{server.http_url}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Inference-Header-Content-Length": str(len(head)),
                                              "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def grpc_infer(server, model: str, inputs: dict):
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        return client.infer(model, tensors)
    finally:
        client.close()


def test_every_model_loaded_with_its_limits(server):
    assert {m.name: m.state for m in server.models()} == {TEXT: "READY", "digits_fp32": "READY",
                                                          "minilm_fp32": "READY"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_over_raw_http_is_a_400_with_one_line(server, case):
    model, inputs, message = CASES[case]
    status, answer = http_infer(server, model, inputs)
    assert status == 400, answer
    assert message in answer["error"] and "\n" not in answer["error"], answer["error"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_over_stock_grpc_is_invalid_argument(server, case):
    model, inputs, message = CASES[case]
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(server, model, inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert message in info.value.message()


def test_good_inputs_at_the_limits_are_answered(server):
    assert http_infer(server, TEXT, text_request([[0, 15, 3]]))[0] == 200  # the vocabulary's first and last ids
    assert http_infer(server, "minilm_fp32", text_request(np.full((1, 512), 1000)))[0] == 200
    assert http_infer(server, "digits_fp32", image_request(255.0))[0] == 200


def statistics(server, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=10) as answer:
        stats = json.loads(answer.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def settled_statistics(server, model: str, inferences: int, timeout: float = 10.0) -> tuple[int, int]:
    """The model's counters once they reach `inferences` (Triton may count a batch after answering it)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = statistics(server, model)
        if counts[0] >= inferences or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_a_bad_request_in_a_batch_fails_alone(server):
    rng = np.random.default_rng(0)
    good = [text_request(np.concatenate([[2], rng.integers(4, 16, size=2), [3]])[None]) for _ in range(6)]
    bad = text_request([[2, -5, 6, 3]])
    requests = good[:3] + [bad] + good[3:]
    alone = [http_infer(server, TEXT, r)[1]["outputs"][0]["data"] for r in good]
    before = statistics(server, TEXT)
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda r: http_infer(server, TEXT, r), requests))
    after = settled_statistics(server, TEXT, before[0] + len(requests))
    assert results[3][0] == 400 and "-5 at [0, 1]" in results[3][1]["error"]
    answered = [r for i, r in enumerate(results) if i != 3]
    assert [status for status, _ in answered] == [200] * 6
    for single, (_, together) in zip(alone, answered):
        np.testing.assert_allclose(together["outputs"][0]["data"], single, rtol=1e-6, atol=1e-6)
    # Triton counts all 7 (the refused one was in a batch handed to execute()); the good ones shared executions
    assert after[0] - before[0] == 7 and after[1] - before[1] < 6
