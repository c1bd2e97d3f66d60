"""The raw-text endpoint on the real embedded server: strings in, the encoder's own answer out, bad text refused.

One repository: a user's text model built by `builder build --text-endpoint` (tests/fixtures/tiny_text), and the
session's MiniLM encoder with its endpoint written next to it by the same function the build calls.
"""

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from builder.serving.server import EmbeddedServer, free_port
from builder.serving.text_endpoint import write_text_endpoint
from client import InvalidInputError, TritonClient
from builder.core.artifacts import text_inputs
from tests.conftest import FIXTURES, run_cli

pytestmark = pytest.mark.e2e

TEXTS = ["a gripping, beautifully shot film", "dull.",
         "Ein Film über nichts — 90 Minuten, die man nie zurückbekommt ☹",
         "the plot meanders, but the performances are superb and the score lingers long after the credits roll"]
LONG_TEXT = " ".join(["an endlessly inventive and moving piece of cinema"] * 60)  # ~480 tokens: truncated at 256
MODEL = "minilm_fp32_text"


def text(*values) -> dict:
    return {"TEXT": np.array([[v if isinstance(v, bytes) else v.encode()] for v in values], dtype=np.object_)}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def text_repository(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    repository, artifacts = root / "model_repository", root / "artifacts"
    result = run_cli("builder", "build", "--config", FIXTURES / "tiny_text" / "tiny_text.yaml", "--text-endpoint",
                     "--repository", repository, "--artifacts", artifacts)
    assert result.returncode == 0, result.stderr
    shutil.copytree(built["repository"] / "minilm_fp32", repository / "minilm_fp32")
    write_text_endpoint(built["specs"]["minilm"], "fp32", repository, built["artifacts"])
    return {"repository": repository, "artifacts": artifacts, "build_output": result.stdout}


@pytest.fixture(scope="module")
def text_server(text_repository):
    with EmbeddedServer(text_repository["repository"], free_port(), free_port(), free_port()) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def text_client(request, text_server):
    with TritonClient(text_server.http_url if request.param == "http" else text_server.grpc_url) as c:
        yield c


@pytest.fixture
def server_survives(text_server):
    yield
    with TritonClient(text_server.grpc_url) as client:
        assert client.infer(MODEL, text("still serving"))["probabilities"].shape == (1, 2)


def test_build_writes_the_endpoint_and_records_it(text_repository):
    repository = text_repository["repository"]
    assert {p.name for p in repository.iterdir()} >= {"tinytext_fp32", "tinytext_fp32_text", "tinytext_tokenizer",
                                                      "tinytext_postprocess"}
    entry = json.loads((text_repository["artifacts"] / "tinytext" / "record.json").read_text())["variants"]["fp32"]
    assert entry["text_endpoint"] == {"model": "tinytext_fp32_text", "tokenizer": "tinytext_tokenizer",
                                      "postprocess": "tinytext_postprocess", "max_tokens": 8}
    assert entry["serving"]["text_endpoint"] is True and "--text-endpoint" in entry["command"]
    assert "wrote the raw-text ensemble tinytext_fp32_text (texts truncated at 8 tokens)" in text_repository[
        "build_output"]


def test_every_model_is_ready(text_server):
    assert {m.name: m.state for m in text_server.models()} == {name: "READY" for name in (
        "minilm_fp32", MODEL, "minilm_tokenizer", "minilm_postprocess",
        "tinytext_fp32", "tinytext_fp32_text", "tinytext_tokenizer", "tinytext_postprocess")}


def test_served_text_equals_client_side_tokenization_and_the_encoder(text_client, built):
    for sentence in TEXTS + [LONG_TEXT]:
        served = text_client.infer(MODEL, text(sentence))
        encoded = text_client.infer("minilm_fp32", text_inputs(built["artifacts"] / "minilm", sentence))
        assert served["label"].tolist() == [[int(np.argmax(encoded["logits"]))]], sentence
        np.testing.assert_allclose(served["probabilities"], softmax(encoded["logits"]), atol=1e-5, rtol=0)
        np.testing.assert_allclose(served["embedding"], encoded["embedding"], atol=1e-5, rtol=0)


def test_long_text_is_truncated_to_the_tokenizers_maximum(text_client):
    # both texts agree on their first 256 tokens; only what lies beyond them differs
    first = text_client.infer(MODEL, text(LONG_TEXT))
    longer = text_client.infer(MODEL, text(LONG_TEXT + " but the ending is a dreadful, boring mess"))
    np.testing.assert_array_equal(first["embedding"], longer["embedding"])


def test_texts_of_different_lengths_in_one_request_are_padded_and_answered_as_alone(text_client):
    together = text_client.infer(MODEL, text(*TEXTS))
    for row, sentence in enumerate(TEXTS):
        alone = text_client.infer(MODEL, text(sentence))
        assert together["label"][row] == alone["label"][0]
        np.testing.assert_allclose(together["probabilities"][row], alone["probabilities"][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(together["embedding"][row], alone["embedding"][0], atol=1e-5, rtol=0)


def test_concurrent_requests_are_each_answered_correctly(text_server):
    sentences = (TEXTS + [LONG_TEXT]) * 3
    with TritonClient(text_server.grpc_url) as client:
        alone = {s: client.infer(MODEL, text(s)) for s in set(sentences)}

    def send(sentence):
        with TritonClient(text_server.grpc_url) as client:
            return client.infer(MODEL, text(sentence))

    with ThreadPoolExecutor(len(sentences)) as pool:
        answers = list(pool.map(send, sentences))
    for sentence, answer in zip(sentences, answers):
        np.testing.assert_allclose(answer["probabilities"], alone[sentence]["probabilities"], atol=1e-5, rtol=0)


@pytest.mark.usefixtures("server_survives")
@pytest.mark.parametrize("bad,message", [(b"", "TEXT[0] is empty"), (b"  \n\t", "TEXT[0] is empty"),
                                         (b"caf\xe9 au lait", "TEXT[0] is not valid UTF-8 (byte 0xe9 at offset 3)")])
def test_bad_text_gets_a_clear_error(text_client, bad, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        text_client.infer(MODEL, text(bad))


@pytest.mark.usefixtures("server_survives")
def test_a_bad_row_names_itself_and_fails_only_its_request(text_server):
    def send(values):
        with TritonClient(text_server.http_url) as client:
            try:
                return client.infer(MODEL, text(*values))
            except InvalidInputError as e:
                return e

    requests = [["fine", ""], ["good"], ["also good", "really"]] * 3
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for values, answer in zip(requests, answers):
        if "" in values:
            assert isinstance(answer, InvalidInputError) and "TEXT[1] is empty" in str(answer)
        else:
            assert answer["probabilities"].shape == (len(values), 2)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_cli_sends_raw_text(text_server, text_repository, protocol):
    url = text_server.http_url if protocol == "http" else text_server.grpc_url
    result = run_cli("client", "infer", "--model", "tinytext_fp32_text", "--text", "red sky over the sea",
                     "--url", url, "--artifacts", text_repository["artifacts"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert any(f"prediction: {name} (p=" in result.stdout for name in ("red", "green", "blue")), result.stdout
    assert "embedding: shape [1, 8]" in result.stdout
    # no build record needed: the server tokenizes; without one the label is printed as its index
    result = run_cli("client", "infer", "--model", MODEL, "--text", TEXTS[0], "--url", url,
                     "--artifacts", "/nonexistent", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prediction: 1 (p=" in result.stdout


def test_client_cli_reports_bad_text(text_server):
    result = run_cli("client", "infer", "--model", MODEL, "--text", "", "--url", text_server.grpc_url, timeout=120)
    assert result.returncode == 2  # every command's handler: an error the user can fix exits 2
    assert "error: in ensemble 'minilm_fp32_text', TEXT[0] is empty" in result.stderr


def test_text_endpoint_for_a_model_that_is_not_a_text_model_fails_before_any_work(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "tiny" / "tiny.yaml", "--text-endpoint",
                     "--repository", tmp_path / "r", "--artifacts", tmp_path / "a", timeout=120)
    assert result.returncode == 2
    assert "error: tiny is not a text model: its spec has no sequence_mask" in result.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "a").exists()
