"""Real inputs for the CLI: text tokenized with the model's own tokenizer, or an example of a cached data split.

Both come from the builder's artifacts folder (`<artifacts>/<model>/`): record.json, tokenizer.json, data/*.npz.

Token ids are right-padded (id 0, mask 0) to the model's length buckets, which its build record lists (the spec's
`length_buckets`): Triton's dynamic batcher joins only requests of one shape, so texts each trimmed to its own
length never batch, while texts padded to a few bucket lengths do. `buckets=()` sends each text as long as it is.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from .errors import ClientError

MAX_TOKENS = 256


def find_record(artifacts: pathlib.Path, triton_model: str) -> tuple[pathlib.Path, dict]:
    """(the model's artifacts folder, its build-record entry) for a served model name such as `minilm_fp32`."""
    for path in sorted(artifacts.glob("*/record.json")):
        record = json.loads(path.read_text())
        for entry in record.get("variants", {}).values():
            if entry.get("triton_model") == triton_model:
                return path.parent, entry
    raise ClientError(f"no build record for model `{triton_model}` under {artifacts}/",
                      hint="build it with `builder build`, or pass --artifacts where it was built")


def text_endpoint_record(artifacts: pathlib.Path, text_model: str) -> dict:
    """The build-record entry of the encoder whose raw-text endpoint is `text_model` (`minilm_fp32_text`), or {}."""
    for path in sorted(artifacts.glob("*/record.json")):
        for entry in json.loads(path.read_text()).get("variants", {}).values():
            if (entry.get("text_endpoint") or {}).get("model") == text_model:
                return entry
    return {}


def length_buckets(folder: pathlib.Path) -> tuple[int, ...]:
    """The length buckets in the build record of the model in `folder`, or () (not a text model, no record, or a
    record written before buckets existed: then texts are sent unpadded, as before)."""
    path = folder / "record.json"
    if not path.is_file():
        return ()
    for entry in json.loads(path.read_text()).get("variants", {}).values():
        if entry.get("length_buckets"):
            return tuple(int(b) for b in entry["length_buckets"])
    return ()


def bucket_for(length: int, buckets) -> int:
    """The smallest bucket that holds `length` tokens; `length` itself if none does (or there are no buckets)."""
    return next((b for b in buckets if b >= length), length)


def bucket_priority(inputs: dict, buckets) -> int:
    """The dynamic-batching priority a request of a text model is sent at: k + 1 for bucket k (its token axis'
    length), 0 (the model's default level) for anything else. See builder/tritonconfig.py build_config."""
    mask = inputs.get("attention_mask")
    width = None if mask is None or np.ndim(mask) != 2 else np.shape(mask)[1]
    return buckets.index(width) + 1 if width in buckets else 0


def fit_tokens(array: np.ndarray, width: int) -> np.ndarray:
    """`array` [batch, tokens] cut or right-padded with 0 to `width` tokens (contiguous, ready to send)."""
    if array.shape[1] >= width:
        return np.ascontiguousarray(array[:, :width])
    padded = np.zeros((array.shape[0], width), dtype=array.dtype)
    padded[:, :array.shape[1]] = array
    return padded


def text_inputs(folder: pathlib.Path, text: str, buckets=None) -> dict:
    """`text` tokenized as the model was trained, padded to its bucket (`buckets` None: the model's own)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ClientError(f"model in {folder} has no tokenizer.json; --text needs a text model")
    if not text.strip():
        raise ClientError("--text is empty", hint="pass the sentence to classify")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    width = bucket_for(ids.shape[1], length_buckets(folder) if buckets is None else buckets)
    return {"input_ids": fit_tokens(ids, width), "attention_mask": fit_tokens(np.ones_like(ids), width)}


def split_example(folder: pathlib.Path, split: str, index: int) -> tuple[dict, int]:
    path = folder / "data" / f"{split}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in (folder / "data").glob("*.npz"))
        raise ClientError(f"no split `{split}` for this model", hint=f"splits: {', '.join(known)}")
    with np.load(path) as data:
        count = len(data["labels"])
        if not 0 <= index < count:
            raise ClientError(f"--index {index} is out of range: split `{split}` has {count} examples")
        inputs = {k[len("input."):]: data[k][index:index + 1] for k in data.files if k.startswith("input.")}
        label = int(data["labels"][index])
    mask = inputs.get("attention_mask")
    if mask is not None:  # cached splits are padded to their longest text: send this one's tokens, to its bucket
        length = bucket_for(int(mask.sum()), length_buckets(folder))
        inputs = {k: fit_tokens(v, length) for k, v in inputs.items()}
    return inputs, label


def request_batches(folder: pathlib.Path, split: str = "test", batch_size: int = 1, count: int = 256,
                    tokens: int = 0, buckets=None) -> list[dict]:
    """Up to `count` real requests of `batch_size` consecutive examples of a cached split, for load tests: their
    starts spread evenly over the split, in a fixed shuffled order.

    Text requests keep the split's own mix of lengths: each is padded to the smallest of `buckets` (None: the
    model's own, from its build record) that holds its longest example, so that Triton's dynamic batcher (which
    never batches different shapes together) can group requests of one bucket; with `buckets=()`, each keeps only
    the tokens its longest example needs. With `tokens`, only texts at least that long are used, cut to exactly
    `tokens`: every request has that one shape.
    """
    if batch_size < 1:
        raise ClientError(f"batch size must be at least 1, got {batch_size}")
    path = folder / "data" / f"{split}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in (folder / "data").glob("*.npz"))
        raise ClientError(f"no split `{split}` for this model", hint=f"splits: {', '.join(known) or 'none cached'}")
    with np.load(path) as data:
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
    total = len(next(iter(inputs.values())))
    if total < batch_size:
        raise ClientError(f"split `{split}` has {total} examples, fewer than the batch size {batch_size}")
    mask = inputs.get("attention_mask")
    buckets = () if tokens else length_buckets(folder) if buckets is None else tuple(buckets)
    if tokens and mask is not None:
        long_enough = np.flatnonzero(mask.sum(axis=1) >= tokens)
        if len(long_enough) < batch_size:
            raise ClientError(f"split `{split}` has {len(long_enough)} texts of {tokens} tokens or more",
                              hint="ask for fewer tokens")
        inputs = {k: v[long_enough, :tokens] for k, v in inputs.items()}
        mask, total = inputs["attention_mask"], len(long_enough)
    # Cached text splits are sorted by length: take batches spread evenly over the whole split, in a fixed
    # shuffled order, so that the requests have the split's own mix of lengths, mixed in time (the first `count`
    # examples would all be the shortest texts).
    starts = np.unique(np.linspace(0, total - batch_size, min(count, total // batch_size)).astype(int))
    starts = np.random.default_rng(0).permutation(starts)
    batches = []
    for start in starts:
        batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
        if mask is not None:
            length = bucket_for(max(int(mask[start:start + batch_size].sum(axis=1).max()), 1), buckets)
            batch = {k: fit_tokens(v, length) for k, v in batch.items()}
        batches.append(batch)
    return batches
