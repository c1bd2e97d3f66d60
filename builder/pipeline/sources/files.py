"""Labelled examples as they lie on disk: CSV, JSON-lines or Parquet files with a text column and a label column; the seeded
split of one file into train, validation and test; the spec inferred from a model and its data, written beside the
build record.

Every problem is one DataError line that names the file, the line and what is wrong, found before anything is
written: a missing column, an empty text, an empty label (and, in builder/pipeline/sources/hf.py, a label that is not one of
the model's classes). Lines are counted as an editor shows them: the CSV header is line 1.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from dataclasses import dataclass

import numpy as np

from ...core.artifacts import spec_path
from ...core.errors import ConfigError, DataError
from ...core.files import atomic_write
from ...core.names import MAX_MODEL_NAME
from ...core.spec import parse_spec

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.2}  # of one file; train is the rest
FORMATS = {".csv": "CSV", ".jsonl": "JSON lines", ".ndjson": "JSON lines", ".parquet": "Parquet"}


@dataclass(frozen=True)
class Row:
    line: int  # where the example is in its file, for messages: its line (CSV, JSON lines) or row (Parquet)
    text: str | tuple[str, ...]  # a token row's words
    label: object  # as written: a string (CSV) or any JSON scalar (JSON lines); a token row's tuple of tags
    unit: str = "line"  # what `line` counts: "line", or "row" in a Parquet file


def read_rows(path: str | pathlib.Path, text_column: str, label_column: str, words: bool = False) -> list[Row]:
    """The examples of one file, in file order. `words`: a token-classification file, whose text is a list of words
    and whose label is one tag per word (each a JSON list or a whitespace-separated string). Raises DataError
    (file, line, what) for an unreadable file, an unknown format, a missing column, an empty text or label, a count
    of tags unlike the count of words, or a file without examples."""
    path = pathlib.Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown data format `{path.suffix or '(no extension)'}`",
                        hint="a CSV file with a header line (.csv), one JSON object per line (.jsonl) or Parquet")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if kind == "Parquet":
        rows = _parquet_rows(path, text_column, label_column, words)
    else:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(_csv_rows(f, path, text_column, label_column, words) if kind == "CSV"
                            else _jsonl_rows(f, path, text_column, label_column, words))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})",
                            hint="save the file as UTF-8") from e
        except csv.Error as e:
            raise DataError(f"{path}: not readable as CSV: {e}") from e
    if not rows:
        raise DataError(f"{path}: no examples", hint=f"a header line with `{text_column}` and `{label_column}`, "
                                                     "then one example per line")
    return rows


def _csv_rows(f, path: pathlib.Path, text_column: str, label_column: str, words: bool):
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(f"{path}, line 1: no column `{column}` (columns: {', '.join(columns) or 'none'})",
                            hint="name the columns with --text-column and --label-column")
    for record in reader:
        yield _row(path, reader.line_num, record.get(text_column), record.get(label_column), text_column,
                   label_column, words)


def _jsonl_rows(f, path: pathlib.Path, text_column: str, label_column: str, words: bool):
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue  # a trailing blank line is common and holds no example
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        for column in (text_column, label_column):
            if column not in record:
                raise DataError(f"{path}, line {number}: no key `{column}` (keys: {', '.join(record) or 'none'})",
                                hint="name them with --text-column and --label-column")
        yield _row(path, number, record[text_column], record[label_column], text_column, label_column, words)


def _parquet_rows(path: pathlib.Path, text_column: str, label_column: str, words: bool) -> list[Row]:
    """A Parquet file's rows, numbered from 1 as `row N` (pyarrow reads it; only the two columns are loaded)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        for column in (text_column, label_column):
            if column not in schema.names:
                raise DataError(f"{path}: no column `{column}` (columns: {', '.join(schema.names) or 'none'})",
                                hint="name the columns with --text-column and --label-column")
        table = pq.read_table(path, columns=[text_column, label_column])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise DataError(f"{path}: not readable as Parquet: {str(e).splitlines()[0]}") from e
    texts, labels = table.column(text_column).to_pylist(), table.column(label_column).to_pylist()
    return [_row(path, number, text, label, text_column, label_column, words, unit="row")
            for number, (text, label) in enumerate(zip(texts, labels), start=1)]


def _row(path: pathlib.Path, line: int, text, label, text_column: str, label_column: str, words: bool = False,
         unit: str = "line") -> Row:
    where = f"{path}, {unit} {line}"
    if words:
        return _token_row(where, line, text, label, text_column, label_column, unit)
    if text is None:  # a CSV line with fewer fields than the header, a null in Parquet
        raise DataError(f"{where}: no value in column `{text_column}`")
    if not isinstance(text, str):
        raise DataError(f"{where}: text in `{text_column}` is {type(text).__name__}, not a string")
    if not text.strip():
        raise DataError(f"{where}: empty text in column `{text_column}`")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: no label in column `{label_column}`")
    return Row(line, text, label.strip() if isinstance(label, str) else label, unit)


def _token_row(where: str, line: int, text, label, text_column: str, label_column: str, unit: str) -> Row:
    """A token-classification row: its words and one tag per word, each a list or a whitespace-separated string."""
    def pieces(value, column: str, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
            raise DataError(f"{where}: {what} in `{column}` must be a list or a space-separated string, got "
                            f"{type(value).__name__}")
        if not value or any(isinstance(v, str) and not v.strip() for v in value):
            raise DataError(f"{where}: empty {what} in column `{column}`")
        return tuple(value)

    if text is None or label is None:
        raise DataError(f"{where}: no value in column `{text_column if text is None else label_column}`")
    tokens, tags = pieces(text, text_column, "words"), pieces(label, label_column, "tags")
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} words in `{text_column}` but {len(tags)} tags in `{label_column}`",
                        hint="one tag per word")
    return Row(line, tokens, tags, unit)


def split_seeded(count: int, path, seed: int) -> dict[str, np.ndarray]:
    """Indices of `count` examples of one file shuffled with `seed` and cut 70/10/20 into {train, validation,
    test}. Raises DataError if a split would be empty."""
    counts = {s: round(count * f) for s, f in SPLIT_FRACTIONS.items()}
    if min(counts.values()) < 1 or count - sum(counts.values()) < 1:
        raise DataError(f"{path}: {count} examples are too few to split into train, validation and test "
                        f"(70/10/20)", hint="at least 10 examples, or one file per split")
    order = np.random.default_rng(seed).permutation(count)
    test, validation = order[:counts["test"]], order[counts["test"]:counts["test"] + counts["validation"]]
    return {"train": order[counts["test"] + counts["validation"]:], "validation": validation, "test": test}


def check_split_names(files) -> None:
    """One path, or a dict naming exactly train, validation and test. Raises ConfigError."""
    if isinstance(files, dict) and sorted(files) != sorted(SPLITS):
        raise ConfigError(f"data files for splits {sorted(files)}: name one file, or one for each of "
                          f"{', '.join(SPLITS)}", hint="--data train=a.csv --data validation=b.csv "
                                                       "--data test=c.csv, or --data all.csv")


def write_spec(spec: dict, artifacts: pathlib.Path, command: str) -> pathlib.Path:
    """Write a spec the kit inferred (as YAML's dict) to `<artifacts>/<name>/spec.yaml`, atomically, after
    checking it as `--config` will; returns the path. Raises ConfigError for a bad spec (a bad --name) or when that
    folder already holds a spec inferred from another model or other data (its cached splits and models would be
    reused as they are)."""
    import yaml

    path = spec_path(artifacts, spec["name"])
    parse_spec(spec, where=str(path))  # a bad --name fails here, before the folder exists
    text = (f"# Inferred by `{command}`. Edit it and build it again with\n"
            f"#   builder build --config {path} --variant ...\n"
            + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=120))
    if path.is_file() and yaml.safe_load(path.read_text()) != spec:
        raise ConfigError(f"{path} was inferred from another model or other data; its cached splits and "
                          f"models would be reused", hint=f"pass --name for a new model, or delete {path.parent}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def default_name(model_path) -> str:
    """A served-name-safe model name from a model's directory or file name: `My BERT (v2)` -> `my_bert_v2`,
    `cnn.onnx` -> `cnn`, `cnn.pt2` -> `cnn`."""
    path = pathlib.Path(model_path).resolve()
    stem = path.stem if path.suffix.lower() in (".onnx", ".pt", ".pt2", ".pth", ".ts") else path.name
    name = re.sub(r"[^a-z0-9_.-]+", "_", stem.lower()).strip("_.-")
    return name[:MAX_MODEL_NAME].rstrip("_.-") or "model"
