"""A Hugging Face Transformers directory and a data file as a model source, without Python from the user.

    builder build --hf-model DIR --data data.csv --text-column text --label-column label --variant fp32,int8

`infer_spec` reads the directory's config.json and the data file(s) and checks every row; only then is the spec it
inferred written to `<artifacts>/<model>/spec.yaml` (files.write_spec): an ordinary spec whose factory and data are
the two functions of this module (`load_model`, `load_data`), parameterised by `factory_args` and `data_args`.
`builder build --config` builds it again; the user may edit it and grow it into a full spec.

Supported: sequence classification (an `...ForSequenceClassification` architecture in config.json). The served
model takes `input_ids` and `attention_mask` [batch, seq] and returns `logits` [batch, classes]; the class names
are config.json's `id2label`. `token_type_ids` is not an input: a single text's are all zeros, which BERT-style
models fill in themselves when it is left out, so the answer is the same and the raw-text endpoint (ids and mask)
works unchanged. The tokenizer is the directory's own fast tokenizer, truncating at `max_tokens` (the smaller of
the tokenizer's `model_max_length` and the model's position table) and written to the work folder as
tokenizer.json, as a text model's must be (builder/serving/text_endpoint).

Data: one file per split (train, validation, test), or one file split with a fixed seed into 70/10/20. Labels are
class names from `id2label` or class indices. Raises DataError for bad data, ConfigError for anything else.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np

from ..core.artifacts import tokenizer_path
from ..core.data import Split, padded_tokens
from ..core.errors import ConfigError, DataError
from .files import Row, check_split_names, default_name, read_rows, split_seeded

SEED = 0
EXAMPLE_TOKENS = 32  # the export example's and Triton warm-up's sequence length (capped at max_tokens)
# two instances, as the text demo: with one, Triton 2.51's dynamic batcher left ~1-3 % of a text model's requests
# in its queue for its 500 ms idle wait (builder/sources/minilm.yaml, docs/load-tests.md)
INSTANCES = 2


def read_config(model_dir: pathlib.Path) -> dict:
    """config.json of a Transformers directory. Raises ConfigError if there is none or it is not a supported task."""
    path = pathlib.Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir}: not a Hugging Face Transformers directory (no config.json)",
                          hint="pass the folder `save_pretrained` wrote, holding config.json, the weights and "
                               "the tokenizer")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"{path}: architectures {architectures} hold no `...ForSequenceClassification`",
                          hint="--hf-model builds sequence classifiers so far; describe other models in a spec "
                               "(docs/own-model.md)")
    return config


def class_names(config: dict) -> list[str]:
    """The class names in index order, from config.json's `id2label` (keys are the indices, written as strings)."""
    id2label = config.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    if not names or any(n is None for n in names):
        raise ConfigError(f"config.json: id2label {id2label} does not name classes 0..{len(id2label) - 1}")
    return [str(n) for n in names]


def tokenizer(model_dir: pathlib.Path, max_tokens: int | None = None):
    """The directory's fast tokenizer (a `tokenizers.Tokenizer`), no padding, truncating at `max_tokens` (None: the
    directory's own maximum, see module doc). Raises ConfigError if the directory has no fast tokenizer."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the directory holds everything; never reach for a hub
    try:
        loaded = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_dir}: cannot load its tokenizer: {e}",
                          hint="save the tokenizer into the directory with `tokenizer.save_pretrained(DIR)`") from e
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{model_dir}: its tokenizer has no fast (Rust) version",
                          hint="the raw-text endpoint and the kit's clients need tokenizer.json: save a fast "
                               "tokenizer (`AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)`)")
    if max_tokens is None:
        positions = read_config(model_dir).get("max_position_embeddings") or 512
        max_tokens = min(int(loaded.model_max_length) if loaded.model_max_length < 1e6 else positions, positions)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())  # a copy: the settings below must not leak into `loaded`
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def encode(tok, texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, right-padded with 0 to the longest text."""
    return padded_tokens(tok.encode_batch(texts))


def label_of(row: Row, path, classes: list[str], label_column: str) -> int:
    """The class index of a row's label: a class name, or an index 0..classes-1. Raises DataError."""
    value = row.label
    if str(value) in classes:
        return classes.index(str(value))
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\d+", value)):
        if 0 <= int(value) < len(classes):
            return int(value)
    raise DataError(f"{path}, {row.unit} {row.line}: label `{value}` in column `{label_column}` is not one of the "
                    f"classes ({', '.join(classes)}) nor a class index 0..{len(classes) - 1}",
                    hint="the classes are config.json's id2label")


def read_examples(files, text_column: str, label_column: str, classes: list[str],
                  seed: int = SEED) -> dict[str, tuple[list[str], np.ndarray]]:
    """{split: (texts, labels)} from `files`: one path (split 70/10/20 with `seed`) or {train, validation, test:
    path}. Every row is checked. Raises DataError, or ConfigError for a wrong set of splits."""
    check_split_names(files)
    if isinstance(files, dict):
        result = {}
        for split, path in files.items():
            rows = read_rows(path, text_column, label_column)
            result[split] = ([r.text for r in rows],
                             np.array([label_of(r, path, classes, label_column) for r in rows], dtype=np.int64))
        return result
    rows = read_rows(files, text_column, label_column)
    labels = np.array([label_of(r, files, classes, label_column) for r in rows], dtype=np.int64)
    return {name: ([rows[i].text for i in index], labels[index])
            for name, index in split_seeded(len(rows), files, seed).items()}


def load_data(workdir: pathlib.Path, model_dir: str, files, text_column: str, label_column: str, max_tokens: int,
              seed: int = SEED) -> dict[str, Split]:
    """The spec's data function: the files tokenized with the directory's tokenizer. Validation and test are
    ordered by length, so evaluation batches carry little padding (order does not change accuracy)."""
    classes = class_names(read_config(model_dir))
    tok = tokenizer(pathlib.Path(model_dir), max_tokens)
    splits = {}
    for name, (texts, labels) in read_examples(files, text_column, label_column, classes, seed).items():
        inputs = encode(tok, texts)
        if name != "train":
            order = np.argsort(inputs["attention_mask"].sum(axis=1), kind="stable")
            inputs, labels = {k: v[order] for k, v in inputs.items()}, labels[order]
        splits[name] = Split(inputs, labels)
    return splits


def load_model(workdir: pathlib.Path, model_dir: str, max_tokens: int):
    """The spec's factory: the directory's classifier, returning logits; writes tokenizer.json to `workdir`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    class SequenceClassifier(torch.nn.Module):
        """forward(input_ids, attention_mask) -> logits [batch, classes]: the kit passes inputs by name and
        wants tensors, not a ModelOutput."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    # eager attention: the exported graph is plain MatMul/Softmax, which int8 quantizes (as minilm's encoder)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="eager")
    tokenizer(pathlib.Path(model_dir), max_tokens).save(str(tokenizer_path(workdir.parent, workdir.name)))
    return SequenceClassifier(model.eval()).eval()


def infer_spec(model_dir: pathlib.Path, files, text_column: str = "text", label_column: str = "label",
               name: str | None = None) -> dict:
    """The spec (as YAML's dict) of a classifier directory and its data, every data row checked."""
    model_dir = pathlib.Path(model_dir).resolve()
    config = read_config(model_dir)
    classes = class_names(config)
    files = {k: str(pathlib.Path(v).resolve()) for k, v in files.items()} if isinstance(files, dict) \
        else str(pathlib.Path(files).resolve())
    read_examples(files, text_column, label_column, classes)  # every row, before anything is written
    max_tokens = tokenizer(model_dir).truncation["max_length"]
    return {
        "name": name or default_name(model_dir),
        "factory": "builder.sources.hf:load_model",
        "factory_args": {"model_dir": str(model_dir), "max_tokens": max_tokens},
        "data": "builder.sources.hf:load_data",
        "data_args": {"model_dir": str(model_dir), "files": files, "text_column": text_column,
                      "label_column": label_column, "max_tokens": max_tokens, "seed": SEED},
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                   {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(classes)]}],
        "metric": {"name": "accuracy", "output": "logits"},
        "evaluate": ["test"],
        "example_sizes": {"seq": min(EXAMPLE_TOKENS, max_tokens)},
        "sequence_mask": "attention_mask",
        "class_names": classes,
        "instances": INSTANCES,
        "standard_variants": ["fp32", "fp16", "int8"],
    }
