"""The other two Hugging Face tasks, built without Python (`builder build --hf-model DIR --data FILE`): a token
classifier (JSON lines of words and tags) and a sentence-transformers embedding model (a CSV of labelled texts).
Every variant that applies builds (fp32, fp16, int8), a trained one is refused in one line, and the served models
answer through the stock tritonclient exactly as in-process ONNX Runtime on the written model.onnx, also through
the raw-text endpoint.

Both models are made here, from the tokenizer of test_hf_model.py: a BertForTokenClassification of hidden size 32
trained 80 steps to tag positive and negative words, and an untrained BertModel saved as a sentence-transformers
directory (mean pooling, Normalize, max_seq_length 48), whose embedding the test computes itself with PyTorch.
"""

import csv
import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.core.artifacts import read_split
from builder.core.evaluate import IGNORE
from builder.core.spec import load_spec
from builder.serving.server import EmbeddedServer, free_port
from tests.conftest import run_cli
from tests.e2e.test_hf_model import (CLASSES, FILLER, NEGATIVE, POSITIVE, examples, make_tokenizer, tiny_bert,
                                     train_and_save)

pytestmark = pytest.mark.e2e
os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the CLI runs: nothing may reach for a hub

TAGS = ["O", "POS", "NEG"]
TAGGER, EMBEDDER = "tiny-tagger", "tiny-embedder"
TEXTS = ["the film was greatly good", "a very dull plot"]  # `greatly`: two sub-words (great ##ly)


def tagged(rng, count: int) -> list[tuple[list[str], list[str]]]:
    """Sentences of filler, positive and negative words (some as `<word>ly`: two sub-words), tagged per word."""
    rows = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.integers(3, 9)):
            kind = rng.choice(["O", "O", "POS", "NEG"])
            word = str(rng.choice({"O": FILLER, "POS": POSITIVE, "NEG": NEGATIVE}[kind]))
            words.append(word + "ly" if kind != "O" and rng.random() < 0.3 else word)
            tags.append(str(kind))
        rows.append((words, tags))
    return rows


def make_tagger(folder) -> None:
    import torch
    from transformers import BertForTokenClassification

    tokenizer, model = tiny_bert(BertForTokenClassification, TAGS)

    def loss_of(model, rng):
        batch = tagged(rng, 32)
        encoded = tokenizer([w for w, _ in batch], is_split_into_words=True, padding=True, return_tensors="pt")
        labels = torch.full(encoded["input_ids"].shape, IGNORE)
        for row, (_, tags) in enumerate(batch):
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None:
                    labels[row, position] = TAGS.index(tags[word])
        return model(**encoded, labels=labels).loss

    train_and_save(model, tokenizer, folder, 80, 3e-3, loss_of)


def make_embedder(folder) -> None:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer, vocab = make_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))


def build(root, model: str, data, *extra):
    return run_cli("builder", "build", "--hf-model", root / model, "--data", data, *extra,
                   "--repository", root / "model_repository", "--artifacts", root / "artifacts", timeout=600)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tasks")
    make_tagger(root / TAGGER)
    with open(root / "tagged.jsonl", "w") as f:  # words as lists; every third row as strings, as a CSV holds them
        for i, (words, tags) in enumerate(tagged(np.random.default_rng(2), 200)):
            row = {"tokens": " ".join(words), "ner_tags": " ".join(tags)} if i % 3 == 0 else \
                {"tokens": words, "ner_tags": tags}
            f.write(json.dumps(row) + "\n")
    make_embedder(root / EMBEDDER)
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((text, CLASSES[label]) for text, label in examples(np.random.default_rng(3), 200))
    # --force: on models this small int8 and fp16 may measure slower than fp32, and the speed gate would keep them
    # out of the repository; what is tested here is that they serve what ONNX Runtime computes
    for model, data, extra in ((TAGGER, root / "tagged.jsonl", ("--text-column", "tokens", "--label-column",
                                                                 "ner_tags")),
                               (EMBEDDER, root / "reviews.csv", ())):
        result = build(root, model, data, *extra, "--variant", "all", "--text-endpoint", "--force")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def server(root):
    with EmbeddedServer(root / "model_repository", free_port(), free_port(), free_port()) as running:
        yield running


def record(root, model: str) -> dict:
    return json.loads((root / "artifacts" / model / "record.json").read_text())["variants"]


def test_the_tagger_spec_scores_first_sub_words_only(root):
    spec = load_spec(root / "artifacts" / TAGGER / "spec.yaml")
    assert spec.outputs[0].shape == ("batch", "seq", 3) and spec.class_names == tuple(TAGS)
    assert spec.metric.name == "accuracy" and spec.sequence_outputs == ("logits",)
    test = read_split(root / "artifacts" / TAGGER / "data" / "test.npz")
    assert test.labels.shape == test.inputs["input_ids"].shape
    scored = test.labels != IGNORE
    words = sum(len(json.loads(line)["ner_tags"].split() if isinstance(json.loads(line)["ner_tags"], str)
                    else json.loads(line)["ner_tags"]) for line in (root / "tagged.jsonl").read_text().splitlines())
    assert 0 < scored.sum() < words  # one label per word of the test rows only; ##ly and [CLS]/[SEP] unscored
    assert not scored[test.inputs["attention_mask"] == 0].any()
    variants = record(root, TAGGER)
    assert sorted(variants) == ["fp16", "fp32", "int8"]  # `all`: every post-training variant of the task
    assert variants["fp32"]["accuracy"]["test"] > 0.9  # trained tagging, on held-out rows' tokens


def test_the_embedder_spec_is_mean_pooled_normalized_and_capped(root):
    spec = load_spec(root / "artifacts" / EMBEDDER / "spec.yaml")
    assert spec.outputs[0].name == "sentence_embedding" and spec.outputs[0].shape == ("batch", 32)
    assert spec.metric.name == "knn_accuracy" and spec.class_names == tuple(CLASSES)
    assert spec.factory_args["max_tokens"] == 48  # sentence_bert_config.json's max_seq_length, under 64
    variants = record(root, EMBEDDER)
    assert sorted(variants) == ["fp16", "fp32", "int8"]
    assert variants["fp32"]["agreement_with_fp32"]["cosine_sentence_embedding"] == pytest.approx(1.0)
    assert variants["int8"]["agreement_with_fp32"]["cosine_sentence_embedding"] > 0.9


@pytest.mark.parametrize("model", [TAGGER, EMBEDDER])
def test_a_trained_variant_is_refused_in_one_line(root, tmp_path, model):
    data = root / ("tagged.jsonl" if model == TAGGER else "reviews.csv")
    columns = ("--text-column", "tokens", "--label-column", "ner_tags") if model == TAGGER else ()
    result = run_cli("builder", "build", "--hf-model", root / model, "--data", data, *columns, "--variant",
                     "distilled", "--repository", tmp_path / "repo", "--artifacts", root / "artifacts")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the kit trains classifiers only" in errors[0], result.stderr
    assert not (tmp_path / "repo").exists() and not (root / "artifacts" / model / "distilled").exists()


def stock_infer(server, stock, model: str, batch: dict, outputs: list[str]) -> list[np.ndarray]:
    url = (server.http_url if stock is httpclient else server.grpc_url).split("://", 1)[1]
    client = stock.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in batch.items():
            tensors.append(stock.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64"))
            tensors[-1].set_data_from_numpy(array)
        answer = client.infer(model, tensors)
    finally:
        client.close()
    return [answer.as_numpy(name) for name in outputs]


@pytest.mark.parametrize("stock", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("model,output", [(TAGGER, "logits"), (EMBEDDER, "sentence_embedding")])
@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_stock_client_answers_as_onnx_runtime(root, server, stock, model, output, variant):
    import onnxruntime

    served_name = f"{model}_{variant}"
    split = read_split(root / "artifacts" / model / "data" / "test.npz")
    batch = {k: np.ascontiguousarray(v[:8]) for k, v in split.inputs.items()}
    session = onnxruntime.InferenceSession(str(root / "model_repository" / served_name / "1" / "model.onnx"))
    expected = session.run([output], batch)[0]
    served, = stock_infer(server, stock, served_name, batch, [output])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_the_embedding_is_the_sentence_transformers_one(root, server):
    """Mean pooling over real tokens, then L2 normalization, computed here with PyTorch on the directory."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(root / EMBEDDER))
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(root / EMBEDDER)).eval()(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    text = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    served, = stock_infer(server, grpcclient, f"{EMBEDDER}_fp32_text", {"TEXT": text}, ["sentence_embedding"])
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_the_tagger_text_endpoint_answers_logits_and_their_mask(root, server):
    import onnxruntime

    tokenizer, _ = make_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
    inputs = {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    session = onnxruntime.InferenceSession(str(root / "model_repository" / f"{TAGGER}_fp32" / "1" / "model.onnx"))
    expected = session.run(["logits"], inputs)[0]
    text = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    logits, mask = stock_infer(server, httpclient, f"{TAGGER}_fp32_text", {"TEXT": text},
                               ["logits", "attention_mask"])
    for row in range(len(TEXTS)):  # the endpoint pads to a length bucket; its mask says which rows are tokens
        real = int(mask[row].sum())
        assert real == int(inputs["attention_mask"][row].sum())
        np.testing.assert_allclose(logits[row, :real], expected[row, :real], atol=1e-4)
    tags = [TAGS[t] for t in logits[0, :int(mask[0].sum())].argmax(-1)]
    assert tags[1:-1] == ["O", "O", "O", "POS", "POS", "POS"]  # the film was great ##ly good, then [SEP]


def test_a_tag_count_unlike_the_word_count_is_one_line(root, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["the", "film"], "ner_tags": ["O", "O"]}\n'
                   '{"tokens": "a good plot", "ner_tags": "O POS"}\n')
    result = run_cli("builder", "build", "--hf-model", root / TAGGER, "--data", bad, "--text-column", "tokens",
                     "--label-column", "ner_tags", "--variant", "fp32", "--artifacts", tmp_path / "artifacts",
                     "--repository", tmp_path / "repo")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"error: {bad}, line 2: 3 words in `tokens` but 2 tags in `ner_tags`"
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "repo").exists()
