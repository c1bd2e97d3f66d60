"""A Hugging Face Transformers directory and a data file as a model source, without Python from the user.

    builder build --hf-model DIR --data data.csv --text-column text --label-column label --variant fp32,int8

`infer_spec` reads the directory's config.json and the data file(s) and checks every row; only then is the spec it
inferred written to `<artifacts>/<model>/spec.yaml` (files.write_spec): an ordinary spec whose factory and data are
the two functions of this module (`load_model`, `load_data`), parameterised by `factory_args` and `data_args`.
`builder build --config` builds it again; the user may edit it and grow it into a full spec.

The task comes from the directory (TASKS):
- `sequence-classification`: an `...ForSequenceClassification` architecture. Served: `logits` [batch, classes],
  class names config.json's `id2label`; metric accuracy. Data: a text and a label per row.
- `token-classification`: an `...ForTokenClassification` architecture (NER, tagging). Served: `logits`
  [batch, seq, classes], one row per token. Data: the words and one tag per word, each a JSON list or a
  whitespace-separated string (`John lives in Paris` / `B-PER O O B-LOC`); the tags are `id2label`'s names or
  indices. A word's first sub-word carries its tag; later sub-words, special tokens and padding are not scored
  (evaluate.IGNORE), as Transformers' token-classification recipe does. Metric: accuracy over the scored tokens.
- `sentence-embedding`: a sentence-transformers directory (modules.json: Transformer, Pooling with mean or CLS
  tokens, optional Normalize) or a bare encoder (`BertModel`, ...), mean-pooled. Served: `sentence_embedding`
  [batch, dim]. Data: a text and a label per row, the label any class name (for the metric, not the model):
  knn_accuracy, leave-one-out nearest-neighbour accuracy (builder/core/evaluate.py). The truncation length is
  sentence_bert_config.json's `max_seq_length` where it sets one.

The served model takes `input_ids` and `attention_mask` [batch, seq]. `token_type_ids` is not an input: a single
text's are all zeros, which BERT-style models fill in themselves when it is left out, so the answer is the same and
the raw-text endpoint (ids and mask) works unchanged. The tokenizer is the directory's own fast tokenizer,
truncating at `max_tokens` (the smaller of the tokenizer's `model_max_length` and the model's position table) and
written to the work folder as tokenizer.json, as a text model's must be (builder/serving/text_endpoint).
Only the post-training variants apply to the token and embedding tasks: the kit trains classifiers
(builder/pipeline/build.py refuses the rest in one line).

Data: one file per split (train, validation, test), or one file split with a fixed seed into 70/10/20. Raises
DataError for bad data, ConfigError for anything else.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np

from ...core.artifacts import tokenizer_path
from ...core.data import Split, padded_tokens
from ...core.errors import ConfigError, DataError
from ...core.evaluate import IGNORE
from .files import Row, check_split_names, default_name, read_rows, split_seeded

SEED = 0
EXAMPLE_TOKENS = 32  # the export example's and Triton warm-up's sequence length (capped at max_tokens)
# two instances, as the text demo: with one, Triton 2.51's dynamic batcher left ~1-3 % of a text model's requests
# in its queue for its 500 ms idle wait (builder/pipeline/sources/minilm.yaml, docs/load-tests.md)
INSTANCES = 2


SEQUENCE, TOKEN, EMBEDDING = "sequence-classification", "token-classification", "sentence-embedding"
TASKS = (SEQUENCE, TOKEN, EMBEDDING)
ST_MODULE = "sentence_transformers.models."  # a sentence-transformers modules.json's module types start so
POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


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
    task_of(pathlib.Path(model_dir), config)
    return config


def task_of(model_dir: pathlib.Path, config: dict) -> str:
    """The directory's task (TASKS), from its architecture and a sentence-transformers modules.json. Raises
    ConfigError for any other model."""
    architectures = config.get("architectures") or []
    for suffix, task in (("ForSequenceClassification", SEQUENCE), ("ForTokenClassification", TOKEN)):
        if any(a.endswith(suffix) for a in architectures):
            return task
    if (model_dir / "modules.json").is_file() or any(a.endswith("Model") for a in architectures):
        return EMBEDDING
    raise ConfigError(f"{model_dir / 'config.json'}: architectures {architectures} are none of "
                      f"`...ForSequenceClassification`, `...ForTokenClassification` or an encoder (`...Model`, or "
                      f"a sentence-transformers directory)",
                      hint="describe other models in a spec (docs/own-model.md)")


def embedding_head(model_dir: pathlib.Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) of an embedding directory: a sentence-transformers one's modules.json,
    its Pooling config and sentence_bert_config.json; a bare encoder's mean pooling. Raises ConfigError for a
    pipeline the kit does not export (a Dense layer, max pooling, ...)."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return "mean", False, None
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").removeprefix(ST_MODULE) for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]) or modules[0].get("path"):
        raise ConfigError(f"{modules_file}: modules {kinds} (transformer at `{modules[0].get('path')}`); the kit "
                          f"exports Transformer (in the directory itself), Pooling and an optional Normalize",
                          hint="describe other pipelines in a spec (docs/own-model.md)")
    pooling_config = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    modes = [POOLINGS.get(k, k) for k, on in pooling_config.items() if k.startswith("pooling_mode") and on]
    if len(modes) != 1 or modes[0] not in POOLINGS.values():
        raise ConfigError(f"{model_dir / modules[1]['path'] / 'config.json'}: pooling {modes}; the kit exports mean "
                          f"or CLS-token pooling")
    bert_config = model_dir / "sentence_bert_config.json"
    longest = json.loads(bert_config.read_text()).get("max_seq_length") if bert_config.is_file() else None
    return modes[0], kinds[2:] == ["Normalize"], longest


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
        config = read_config(model_dir)
        positions = config.get("max_position_embeddings") or 512
        max_tokens = min(int(loaded.model_max_length) if loaded.model_max_length < 1e6 else positions, positions)
        if task_of(model_dir, config) == EMBEDDING:
            max_tokens = min(max_tokens, embedding_head(model_dir)[2] or max_tokens)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())  # a copy: the settings below must not leak into `loaded`
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def encode(tok, texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, right-padded with 0 to the longest text."""
    return padded_tokens(tok.encode_batch(texts))


def encode_words(tok, words: list[list[str]], tags: list[np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token ids, mask and per-token labels [examples, width] of pre-split words and their tags: a word's first
    sub-word carries its tag, every other position IGNORE (later sub-words, special tokens, padding)."""
    encodings = tok.encode_batch(words, is_pretokenized=True)
    inputs = padded_tokens(encodings)
    labels = np.full(inputs["input_ids"].shape, IGNORE, dtype=np.int64)
    for row, (encoding, word_tags) in enumerate(zip(encodings, tags)):
        previous = None
        for position, word in enumerate(encoding.word_ids):
            if word is not None and word != previous:
                labels[row, position] = word_tags[word]
            previous = word
    return inputs, labels


def label_of(value, where: str, classes: list[str], label_column: str) -> int:
    """The class index of a label: a class name, or an index 0..classes-1. Raises DataError naming `where`."""
    if str(value) in classes:
        return classes.index(str(value))
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\d+", value)):
        if 0 <= int(value) < len(classes):
            return int(value)
    raise DataError(f"{where}: label `{value}` in column `{label_column}` is not one of the classes "
                    f"({', '.join(classes)}) nor a class index 0..{len(classes) - 1}",
                    hint="the classes are config.json's id2label")


def row_labels(row: Row, path, classes: list[str], label_column: str):
    """A row's class index, or a token row's array of them (one per word)."""
    where = f"{path}, {row.unit} {row.line}"
    if isinstance(row.label, tuple):
        return np.array([label_of(tag, where, classes, label_column) for tag in row.label], dtype=np.int64)
    return label_of(row.label, where, classes, label_column)


def read_examples(files, text_column: str, label_column: str, classes: list[str] | None, seed: int = SEED,
                  words: bool = False) -> dict[str, tuple[list, list]]:
    """{split: (texts, labels)} from `files`: one path (split 70/10/20 with `seed`) or {train, validation, test:
    path}. Every row is checked. `words`: each row's text is a list of words and its label one tag per word.
    `classes` None: any label, kept as its string (an embedding model's). Raises DataError, or ConfigError for a
    wrong set of splits."""
    check_split_names(files)

    def labelled(rows, path):
        if classes is None:
            return [r.text for r in rows], [str(r.label) for r in rows]
        return [r.text for r in rows], [row_labels(r, path, classes, label_column) for r in rows]

    def packed(texts, labels):  # a classifier's labels as one int64 array
        return texts, np.array(labels, dtype=np.int64) if classes is not None and not words else labels

    if isinstance(files, dict):
        return {split: packed(*labelled(read_rows(path, text_column, label_column, words), path))
                for split, path in files.items()}
    texts, labels = labelled(read_rows(files, text_column, label_column, words), files)
    return {name: packed([texts[i] for i in index], [labels[i] for i in index])
            for name, index in split_seeded(len(texts), files, seed).items()}


def data_classes(files, text_column: str, label_column: str) -> list[str]:
    """An embedding model's classes: the labels its data holds, sorted (they score the metric, not the model)."""
    found = read_examples(files, text_column, label_column, None)
    return sorted({label for _, labels in found.values() for label in labels})


def load_data(workdir: pathlib.Path, model_dir: str, files, text_column: str, label_column: str, max_tokens: int,
              seed: int = SEED, classes: list[str] | None = None) -> dict[str, Split]:
    """The spec's data function: the files tokenized with the directory's tokenizer. Validation and test are
    ordered by length, so evaluation batches carry little padding (order does not change accuracy). `classes`:
    an embedding model's label names (the spec's class_names); a classifier's come from its config.json."""
    model_dir = pathlib.Path(model_dir)
    config = read_config(model_dir)
    task = task_of(model_dir, config)
    classes = classes if task == EMBEDDING else class_names(config)
    tok = tokenizer(model_dir, max_tokens)
    splits = {}
    for name, (texts, labels) in read_examples(files, text_column, label_column, classes, seed,
                                               words=task == TOKEN).items():
        if task == TOKEN:
            inputs, labels = encode_words(tok, texts, labels)
        else:
            inputs = encode(tok, texts)
        if name != "train":
            order = np.argsort(inputs["attention_mask"].sum(axis=1), kind="stable")
            inputs, labels = {k: v[order] for k, v in inputs.items()}, labels[order]
        splits[name] = Split(inputs, labels)
    return splits


def load_model(workdir: pathlib.Path, model_dir: str, max_tokens: int):
    """The spec's factory: the directory's model answering the task's output as a tensor (the kit passes inputs
    by name and wants tensors, not a ModelOutput); writes tokenizer.json to `workdir`."""
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = pathlib.Path(model_dir)
    task = task_of(model_dir, read_config(model_dir))
    auto = {SEQUENCE: transformers.AutoModelForSequenceClassification,
            TOKEN: transformers.AutoModelForTokenClassification, EMBEDDING: transformers.AutoModel}[task]
    # eager attention: the exported graph is plain MatMul/Softmax, which int8 quantizes (as minilm's encoder)
    model = auto.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    pooling, normalize = embedding_head(model_dir)[:2] if task == EMBEDDING else (None, False)

    class Served(torch.nn.Module):
        """forward(input_ids, attention_mask) -> logits, or the pooled (normalized) sentence embedding."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if pooling is None:
                return out.logits
            hidden = out.last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    tokenizer(model_dir, max_tokens).save(str(tokenizer_path(workdir.parent, workdir.name)))
    return Served(model).eval()


def infer_spec(model_dir: pathlib.Path, files, text_column: str = "text", label_column: str = "label",
               name: str | None = None) -> dict:
    """The spec (as YAML's dict) of a Transformers directory and its data, every data row checked."""
    model_dir = pathlib.Path(model_dir).resolve()
    config = read_config(model_dir)
    task = task_of(model_dir, config)
    files = {k: str(pathlib.Path(v).resolve()) for k, v in files.items()} if isinstance(files, dict) \
        else str(pathlib.Path(files).resolve())
    if task == EMBEDDING:
        classes = data_classes(files, text_column, label_column)
    else:
        classes = class_names(config)
        read_examples(files, text_column, label_column, classes, words=task == TOKEN)  # every row, before writing
    max_tokens = tokenizer(model_dir).truncation["max_length"]
    output = {SEQUENCE: {"name": "logits", "dtype": "float32", "shape": ["batch", len(classes)]},
              TOKEN: {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", len(classes)]},
              EMBEDDING: {"name": "sentence_embedding", "dtype": "float32",
                          "shape": ["batch", int(config.get("hidden_size") or 0) or "dim"]}}[task]
    return {
        "name": name or default_name(model_dir),
        "factory": "builder.pipeline.sources.hf:load_model",
        "factory_args": {"model_dir": str(model_dir), "max_tokens": max_tokens},
        "data": "builder.pipeline.sources.hf:load_data",
        "data_args": {"model_dir": str(model_dir), "files": files, "text_column": text_column,
                      "label_column": label_column, "max_tokens": max_tokens, "seed": SEED,
                      **({"classes": classes} if task == EMBEDDING else {})},
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                   {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}],
        "outputs": [output],
        "metric": {"name": "knn_accuracy" if task == EMBEDDING else "accuracy", "output": output["name"]},
        "evaluate": ["test"],
        "example_sizes": {"seq": min(EXAMPLE_TOKENS, max_tokens)},
        "sequence_mask": "attention_mask",
        "class_names": classes,
        "instances": INSTANCES,
        "standard_variants": ["fp32", "fp16", "int8"],
    }
