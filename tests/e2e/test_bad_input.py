"""Every bad input gets one clear error, and the server stays up."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from client import InvalidInputError, ModelNotFoundError, ServerUnavailableError, TritonClient

pytestmark = pytest.mark.e2e
IMAGE = np.zeros((1, 1, 28, 28), dtype=np.float32)


@pytest.fixture(autouse=True)
def server_survives(server):
    yield
    with TritonClient(server.http_url) as client:
        assert client.is_live()
        assert client.infer("digits_fp32", {"image": IMAGE})["logits"].shape == (1, 10)


def test_unknown_model(client):
    with pytest.raises(ModelNotFoundError) as info:
        client.infer("digits_int4", {"image": IMAGE})
    assert "digits_int4" in str(info.value) and "python -m client models" in info.value.hint


def test_wrong_tensor_name(client):
    with pytest.raises(InvalidInputError, match="picture"):
        client.infer("digits_fp32", {"picture": IMAGE})


def test_wrong_dtype(client):
    with pytest.raises(InvalidInputError, match="(?i)FP64|datatype"):
        client.infer("digits_fp32", {"image": IMAGE.astype(np.float64)})


def test_wrong_shape(client):
    with pytest.raises(InvalidInputError, match="(?i)shape"):
        client.infer("digits_fp32", {"image": np.zeros((1, 28, 28), dtype=np.float32)})


def test_batch_larger_than_max_batch_size(client):
    with pytest.raises(InvalidInputError, match="(?i)batch"):
        client.infer("digits_fp32", {"image": np.zeros((65, 1, 28, 28), dtype=np.float32)})


def test_missing_input(client):
    with pytest.raises(InvalidInputError, match="(?i)expected 2 inputs|attention_mask"):
        client.infer("minilm_fp32", {"input_ids": np.ones((1, 4), dtype=np.int64)})


def test_malformed_json_over_http(server):
    request = urllib.request.Request(f"{server.http_url}/v2/models/digits_fp32/infer", data=b'{"inputs": [',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    # the kit's HTTP front answers it (Triton 2.51 itself said 500: "failed to parse the request JSON")
    assert info.value.code == 400
    assert "the request's JSON cannot be parsed: Expecting value" in json.loads(info.value.read())["error"]


def test_server_not_reachable():
    with TritonClient("http://127.0.0.1:9") as client:
        assert not client.is_live()
        with pytest.raises(ServerUnavailableError) as info:
            client.infer("digits_fp32", {"image": IMAGE})
    assert "builder serve" in info.value.hint
