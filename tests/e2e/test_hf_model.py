"""A Hugging Face classifier directory and a CSV, built without Python (`builder build --hf-model DIR --data CSV`),
served on the real embedded Triton server and answered through the stock tritonclient exactly as in-process ONNX
Runtime answers on the written model.onnx. Each kind of bad data gets its one line and leaves nothing behind.

The model is made here: a BertForSequenceClassification of hidden size 32 and 2 layers, with a WordPiece
tokenizer over a 27-word vocabulary, trained 60 steps to tell positive words from negative ones, saved with
save_pretrained. Nothing comes from a hub.
"""

import csv
import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.core.artifacts import read_split
from builder.core.spec import load_spec
from builder.serving.server import EmbeddedServer, free_port
from tests.conftest import FIXTURES, run_cli

pytestmark = pytest.mark.e2e
os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the CLI runs: nothing may reach for a hub

POSITIVE = ["good", "great", "fine", "superb", "lovely", "bright"]
NEGATIVE = ["bad", "awful", "dull", "poor", "grim", "weak"]
FILLER = ["the", "a", "film", "plot", "cast", "score", "was", "is", "very", "quite"]
CLASSES = ["negative", "positive"]
NAME = "tiny-bert"  # the directory's name, which the model is named after
TEXTS = ["the film was great", "a very dull plot", "Quite LOVELY, the cast", "zebra"]  # case, punctuation, unknown


def examples(rng, count: int) -> list[tuple[str, int]]:
    rows = []
    for _ in range(count):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=rng.integers(2, 8))) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def make_tokenizer():
    """A fast WordPiece tokenizer over the fixtures' words, BERT's normalizer and special tokens; its vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER + ["##ly"]
    ids = {w: i for i, w in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer = BertTokenizerFast(tokenizer_object=backend, model_max_length=64, unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return tokenizer, vocab


def tiny_bert(architecture, classes: list[str]):
    """(tokenizer, a seeded tiny `architecture`: hidden size 32, 2 layers, `classes` named in id2label)."""
    import torch
    from transformers import BertConfig

    tokenizer, vocab = make_tokenizer()
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(classes),
                        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    torch.manual_seed(0)
    return tokenizer, architecture(config)


def train_and_save(model, tokenizer, folder, steps: int, lr: float, loss_of) -> None:
    """Adam for `steps` on `loss_of(model, rng)`, then save_pretrained of the model and its tokenizer."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(1)
    model.train()
    for _ in range(steps):
        loss = loss_of(model, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_classifier(folder) -> None:
    """save_pretrained of a tiny trained BERT classifier and its fast WordPiece tokenizer into `folder`."""
    import torch
    from transformers import BertForSequenceClassification

    tokenizer, model = tiny_bert(BertForSequenceClassification, CLASSES)

    def loss_of(model, rng):
        batch = examples(rng, 32)
        encoded = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
        return model(**encoded, labels=torch.tensor([label for _, label in batch])).loss

    train_and_save(model, tokenizer, folder, 60, 1e-3, loss_of)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    make_classifier(root / NAME)
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows((text, CLASSES[label]) for text, label in examples(np.random.default_rng(2), 200))
    return root


@pytest.fixture(scope="module")
def built(hf):
    repository, artifacts = hf / "model_repository", hf / "artifacts"
    # --force: on a model this small int8 may measure slower than fp32, and the speed gate would keep it out of
    # the repository; what is tested here is that it serves what ONNX Runtime computes
    result = run_cli("builder", "build", "--hf-model", hf / NAME, "--data", hf / "reviews.csv",
                     "--text-column", "review", "--label-column", "sentiment", "--variant", "fp32,int8",
                     "--text-endpoint", "--force", "--repository", repository, "--artifacts", artifacts, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"repository": repository, "artifacts": artifacts, "stdout": result.stdout}


@pytest.fixture(scope="module")
def server(built):
    with EmbeddedServer(built["repository"], free_port(), free_port(), free_port()) as running:
        yield running


def test_the_inferred_spec_is_written_and_builds_again(built, hf):
    path = built["artifacts"] / NAME / "spec.yaml"
    assert f"wrote the inferred spec {path}" in built["stdout"]
    spec = load_spec(path)  # what `builder build --config` reads
    assert spec.name == NAME and spec.class_names == tuple(CLASSES)
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"] and spec.sequence_mask == "attention_mask"
    assert spec.outputs[0].name == "logits" and spec.outputs[0].shape == ("batch", 2)
    assert spec.data_args["files"] == str(hf / "reviews.csv") and spec.data_args["text_column"] == "review"
    assert spec.factory_args["max_tokens"] == 64  # the tokenizer's model_max_length, within 64 positions
    record = json.loads((built["artifacts"] / NAME / "record.json").read_text())
    # every rebuild command names the written spec, so a failed variant is rebuilt from it
    assert f"--config {path}" in record["variants"]["int8"]["command"]
    splits = {name: len(read_split(built["artifacts"] / NAME / "data" / f"{name}.npz")) for name in
              ("train", "validation", "test")}
    assert splits == {"train": 140, "validation": 20, "test": 40}  # one file, split 70/10/20 with a fixed seed
    assert record["variants"]["fp32"]["accuracy"]["test"] > 0.9  # the trained tiny model, on held-out rows


@pytest.mark.parametrize("stock", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_stock_client_answers_as_onnx_runtime(built, server, stock, variant):
    import onnxruntime

    model = f"{NAME}_{variant}"
    split = read_split(built["artifacts"] / NAME / "data" / "test.npz")
    batch = {k: np.ascontiguousarray(v[:8]) for k, v in split.inputs.items()}
    session = onnxruntime.InferenceSession(str(built["repository"] / model / "1" / "model.onnx"))
    expected = session.run(["logits"], batch)[0]
    url = (server.http_url if stock is httpclient else server.grpc_url).split("://", 1)[1]
    client = stock.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in batch.items():
            tensors.append(stock.InferInput(name, list(array.shape), "INT64"))
            tensors[-1].set_data_from_numpy(array)
        served = client.infer(model, tensors).as_numpy("logits")
    finally:
        client.close()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_raw_text_endpoint_uses_the_directory_tokenizer(built, server):
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(built["repository"].parent / NAME))
    encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(built["repository"] / f"{NAME}_fp32" / "1" / "model.onnx"))
    expected = session.run(["logits"], {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]
    client = grpcclient.InferenceServerClient(server.grpc_url.split("://", 1)[1])
    try:
        text = grpcclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
        answer = client.infer(f"{NAME}_fp32_text", [text])
    finally:
        client.close()
    assert answer.as_numpy("label").ravel().tolist() == expected.argmax(axis=1).tolist()
    softmax = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer.as_numpy("probabilities"), softmax, atol=1e-5)


BAD_DATA = {  # fixture -> the one line it is answered with (after `error: <path>`)
    "missing_column.csv": ", line 1: no column `text` (columns: review, label)",
    "unknown_label.csv": ", line 4: label `neutral` in column `label` is not one of the classes (negative, "
                         "positive) nor a class index 0..1",
    "empty_text.csv": ", line 3: empty text in column `text`",
    "short_line.csv": ", line 3: no label in column `label`",
    "not_json.jsonl": ", line 2: not JSON: Expecting ',' delimiter",
}


@pytest.mark.parametrize("fixture", sorted(BAD_DATA))
def test_bad_data_gets_one_line_and_leaves_nothing(hf, tmp_path, fixture):
    path = FIXTURES / "bad_data" / fixture
    result = run_cli("builder", "build", "--hf-model", hf / NAME, "--data", path, "--variant", "fp32,int8",
                     "--repository", tmp_path / "model_repository", "--artifacts", tmp_path / "artifacts")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {path}{BAD_DATA[fixture]}"
    assert len([line for line in lines if line.startswith("error:")]) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "model_repository").exists()
