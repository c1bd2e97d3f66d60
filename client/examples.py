"""Real inputs for the CLI: text tokenized with the model's own tokenizer, or an example of a cached data split.

Both come from the builder's artifacts folder (`<artifacts>/<model>/`): record.json, tokenizer.json, data/*.npz.
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


def text_inputs(folder: pathlib.Path, text: str) -> dict:
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
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


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
    if mask is not None:  # cached splits are padded to their longest text: send only this one's tokens
        length = int(mask.sum())
        inputs = {k: v[:, :length] for k, v in inputs.items()}
    return inputs, label
