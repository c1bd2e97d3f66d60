"""The artifacts store: the one owner of what the builder keeps on disk beside the Triton repository.

  <artifacts>/<model>/record.json      the build record: per variant, what was measured and how to reproduce it
  <artifacts>/<model>/data/<split>.npz the cached data splits (`splits.json` lists them; written last)
  <artifacts>/<model>/tokenizer.json   a text model's tokenizer
  <artifacts>/<model>/spec.yaml        the spec the kit inferred for a model given as it lies on disk (--hf-model)

Every read and write of these goes through this module. A record is changed only under an exclusive lock
(`fcntl.flock` on the `<model>/` folder: a build and a footprint run of the same model never lose each other's
entries) and replaced atomically (`atomic_write`: readers see the old file or the new one, never half of it).
Also here: real inputs built from these files (a split's examples as requests, a text tokenized with the model's
own tokenizer) for the client command, the load tests and the footprint. Raises ArtifactsError.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
from typing import Callable

import numpy as np

from .data import Split
from .errors import ArtifactsError, ConfigError, unknown_name
from .files import atomic_write
from .record import new_record, upgrade
from .spec import call_source

MAX_TOKENS = 256
# a record's speedup within this of 1.0 is noise: the build re-measures it beside fp32 before its speed gate, and
# the report counts in-process compute within it as equal
MARGINAL_SPEEDUP = 0.1


@contextlib.contextmanager
def locked(folder: pathlib.Path):
    """Hold the exclusive lock of a model's artifacts folder (created if missing) for a read-modify-write."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)  # the folder itself: no lock file is left behind
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def tokenizer_path(artifacts: pathlib.Path, model: str) -> pathlib.Path:
    """Where a text model's factory writes its tokenizer.json (read by the raw-text endpoint and `text_inputs`)."""
    return pathlib.Path(artifacts) / model / "tokenizer.json"


def spec_path(artifacts: pathlib.Path, model: str) -> pathlib.Path:
    """Where the spec inferred for a model given as a directory and a data file is written (builder/pipeline/sources/hf.py)."""
    return pathlib.Path(artifacts) / model / "spec.yaml"


def record_path(artifacts: pathlib.Path, model: str) -> pathlib.Path:
    return pathlib.Path(artifacts) / model / "record.json"


def read_record(artifacts: pathlib.Path, model: str) -> dict:
    """The build record of `model` in the current schema (core/record.py upgrades older ones); an empty one if
    none is written."""
    path = record_path(artifacts, model)
    if not path.is_file():
        return new_record(model)
    try:
        return upgrade(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise ArtifactsError(f"{path} is not a build record: {e}",
                             hint=f"rebuild the model: builder build --model {model} --variant all") from e


def update_record(artifacts: pathlib.Path, model: str, change: Callable[[dict], None]) -> pathlib.Path:
    """Apply `change` to the build record of `model` in place, under the lock, and write it atomically."""
    path = record_path(artifacts, model)
    with locked(path.parent):
        record = read_record(artifacts, model)
        change(record)
        atomic_write(path, json.dumps(record, indent=2))
    return path


def write_entry(artifacts: pathlib.Path, model: str, variant: str, entry: dict) -> pathlib.Path:
    """Set the build-record entry of `variant` of `model`."""
    return update_record(artifacts, model, lambda record: record["variants"].__setitem__(variant, entry))


def update_entry(artifacts: pathlib.Path, triton_model: str, key: str, value) -> pathlib.Path | None:
    """Set `key` in the build-record entry of the served model `triton_model` (`minilm_fp32`: model `minilm`,
    variant `fp32`). Returns the record's path, or None if no record has that entry."""
    artifacts = pathlib.Path(artifacts)
    for folder in sorted(p.parent for p in artifacts.glob("*/record.json")):
        if not triton_model.startswith(folder.name + "_"):
            continue
        found = []

        def change(record):
            # by the served name: a combined variant's key (`distilled+int8`) is not its served name's suffix
            # (`distilled-int8`, builder/core/names.py)
            entry = next((e for e in record["variants"].values() if e["triton_model"] == triton_model), None)
            if entry is not None:
                entry[key] = value
                found.append(True)

        path = update_record(artifacts, folder.name, change)
        if found:
            return path
    return None


def read_records(artifacts: pathlib.Path) -> dict[str, dict]:
    """Build-record entries by served model name (`minilm_int8` -> its entry, plus `source`/`variant`)."""
    entries = {}
    for path in sorted(pathlib.Path(artifacts).glob("*/record.json")):
        record = read_record(path.parent.parent, path.parent.name)
        for variant, entry in record.get("variants", {}).items():
            if entry.get("triton_model"):
                entries[entry["triton_model"]] = entry | {"source": record.get("model", path.parent.name),
                                                          "variant": variant}
    return entries


def save_split(split: Split, path: pathlib.Path) -> None:
    arrays = {f"input.{k}": v for k, v in split.inputs.items()}
    np.savez(path, labels=split.labels, **arrays)


def read_split(path: pathlib.Path) -> Split:
    with np.load(path) as data:
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        return Split(inputs, data["labels"])


def load_splits(spec, workdir: pathlib.Path) -> dict[str, Split]:
    """The spec's splits, from the cache in `workdir/data` or, the first time, from its data function."""
    folder = workdir / "data"
    index = folder / "splits.json"
    if index.is_file():
        names = json.loads(index.read_text())
        return {name: read_split(folder / f"{name}.npz") for name in names}
    splits = call_source(spec, "data", workdir)
    if not isinstance(splits, dict) or not all(isinstance(s, Split) for s in splits.values()):
        raise ConfigError(f"{spec.source}: data function `{spec.data}` must return a dict of name -> builder.core.data.Split")
    for role in (spec.train_split, spec.validation_split, spec.calibration_split, *spec.evaluate):
        if role not in splits:
            raise unknown_name("split", role, splits, hint=f"the data function `{spec.data}` returned these")
    expected = {t.name for t in spec.inputs}
    for name, split in splits.items():
        if set(split.inputs) != expected:
            raise ConfigError(f"{spec.source}: split `{name}` has inputs {sorted(split.inputs)}, the spec declares {sorted(expected)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        save_split(split, folder / f"{name}.npz")
    index.write_text(json.dumps(sorted(splits)))  # written last: its presence means the cache is complete
    return splits


def find_record(artifacts: pathlib.Path, triton_model: str) -> tuple[pathlib.Path, dict]:
    """(the model's artifacts folder, its build-record entry) for a served model name such as `minilm_fp32`."""
    for path in sorted(pathlib.Path(artifacts).glob("*/record.json")):
        record = read_record(path.parent.parent, path.parent.name)
        for entry in record.get("variants", {}).values():
            if entry.get("triton_model") == triton_model:
                return path.parent, entry
    raise ArtifactsError(f"no build record for model `{triton_model}` under {artifacts}/",
                      hint="build it with `builder build`, or pass --artifacts where it was built")


def text_endpoint_record(artifacts: pathlib.Path, text_model: str) -> dict:
    """The build-record entry of the encoder whose raw-text endpoint is `text_model` (`minilm_fp32_text`), or {}."""
    for path in sorted(pathlib.Path(artifacts).glob("*/record.json")):
        for entry in read_record(path.parent.parent, path.parent.name).get("variants", {}).values():
            if (entry.get("text_endpoint") or {}).get("model") == text_model:
                return entry
    return {}


def length_buckets(folder: pathlib.Path) -> tuple[int, ...]:
    """The length buckets in the build record of the model in `folder`, or () (not a text model, no record, or a
    record written before buckets existed: then texts are sent unpadded, as before).

    Token ids are right-padded (id 0, mask 0) to these buckets (the spec's `length_buckets`): Triton's dynamic
    batcher joins only requests of one shape, so texts each trimmed to its own length never batch, while texts
    padded to a few bucket lengths do."""
    if not (folder / "record.json").is_file():
        return ()
    for entry in read_record(folder.parent, folder.name).get("variants", {}).values():
        if entry.get("length_buckets"):
            return tuple(int(b) for b in entry["length_buckets"])
    return ()


def bucket_for(length: int, buckets) -> int:
    """The smallest bucket that holds `length` tokens; `length` itself if none does (or there are no buckets)."""
    return next((b for b in buckets if b >= length), length)


def bucket_priority(inputs: dict, buckets) -> int:
    """The dynamic-batching priority a request of a text model is sent at: k + 1 for bucket k (its token axis'
    length), 0 (the model's default level) for anything else. See builder/serving/tritonconfig.py build_config."""
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
        raise ArtifactsError(f"model in {folder} has no tokenizer.json; --text needs a text model")
    if not text.strip():
        raise ArtifactsError("--text is empty", hint="pass the sentence to classify")
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
        raise ArtifactsError(f"no split `{split}` for this model", hint=f"splits: {', '.join(known)}")
    with np.load(path) as data:
        count = len(data["labels"])
        if not 0 <= index < count:
            raise ArtifactsError(f"--index {index} is out of range: split `{split}` has {count} examples")
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
        raise ArtifactsError(f"batch size must be at least 1, got {batch_size}")
    path = folder / "data" / f"{split}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in (folder / "data").glob("*.npz"))
        raise ArtifactsError(f"no split `{split}` for this model", hint=f"splits: {', '.join(known) or 'none cached'}")
    with np.load(path) as data:
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
    total = len(next(iter(inputs.values())))
    if total < batch_size:
        raise ArtifactsError(f"split `{split}` has {total} examples, fewer than the batch size {batch_size}")
    mask = inputs.get("attention_mask")
    buckets = () if tokens else length_buckets(folder) if buckets is None else tuple(buckets)
    if tokens and mask is not None:
        long_enough = np.flatnonzero(mask.sum(axis=1) >= tokens)
        if len(long_enough) < batch_size:
            raise ArtifactsError(f"split `{split}` has {len(long_enough)} texts of {tokens} tokens or more",
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
