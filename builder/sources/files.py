"""Labelled examples as they lie on disk: CSV or JSON-lines files with a text column and a label column.

Every problem is one DataError line that names the file, the line and what is wrong, found before anything is
written: a missing column, an empty text, an empty label (and, in builder/sources/hf.py, a label that is not one of
the model's classes). Lines are counted as an editor shows them: the CSV header is line 1.
"""

from __future__ import annotations

import csv
import json
import pathlib
from dataclasses import dataclass

from ..core.errors import DataError

FORMATS = {".csv": "CSV", ".jsonl": "JSON lines", ".ndjson": "JSON lines"}


@dataclass(frozen=True)
class Row:
    line: int  # where the example is in its file, for messages
    text: str
    label: object  # as written: a string (CSV) or any JSON scalar (JSON lines)


def read_rows(path: str | pathlib.Path, text_column: str, label_column: str) -> list[Row]:
    """The examples of one file, in file order. Raises DataError (file, line, what) for an unreadable file, an
    unknown format, a missing column, an empty text or label, or a file without examples."""
    path = pathlib.Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        hint = ("Parquet needs pyarrow, which the kit does not install: write it as CSV "
                "(`pandas.read_parquet(p).to_csv(q, index=False)`)" if path.suffix.lower() == ".parquet"
                else "a CSV file with a header line (.csv) or one JSON object per line (.jsonl)")
        raise DataError(f"{path}: unknown data format `{path.suffix or '(no extension)'}`", hint=hint)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(_csv_rows(f, path, text_column, label_column) if kind == "CSV"
                        else _jsonl_rows(f, path, text_column, label_column))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})",
                        hint="save the file as UTF-8") from e
    except csv.Error as e:
        raise DataError(f"{path}: not readable as CSV: {e}") from e
    if not rows:
        raise DataError(f"{path}: no examples", hint=f"a header line with `{text_column}` and `{label_column}`, "
                                                     "then one example per line")
    return rows


def _csv_rows(f, path: pathlib.Path, text_column: str, label_column: str):
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(f"{path}, line 1: no column `{column}` (columns: {', '.join(columns) or 'none'})",
                            hint="name the columns with --text-column and --label-column")
    for record in reader:
        yield _row(path, reader.line_num, record.get(text_column), record.get(label_column), text_column,
                   label_column)


def _jsonl_rows(f, path: pathlib.Path, text_column: str, label_column: str):
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
        yield _row(path, number, record[text_column], record[label_column], text_column, label_column)


def _row(path: pathlib.Path, line: int, text, label, text_column: str, label_column: str) -> Row:
    if text is None:  # a CSV line with fewer fields than the header
        raise DataError(f"{path}, line {line}: no value in column `{text_column}`")
    if not isinstance(text, str):
        raise DataError(f"{path}, line {line}: text in `{text_column}` is {type(text).__name__}, not a string")
    if not text.strip():
        raise DataError(f"{path}, line {line}: empty text in column `{text_column}`")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{path}, line {line}: no label in column `{label_column}`")
    return Row(line, text, label.strip() if isinstance(label, str) else label)
