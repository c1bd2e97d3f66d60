"""The one console-table printer: columns right-aligned, picked by name, so a column added to a table elsewhere
never shifts what a command prints."""

from __future__ import annotations

from typing import Sequence


def print_table(header: Sequence[str], body: Sequence[Sequence[str]], columns: Sequence[str] | None = None,
                indent: str = "", text_last: bool = False, left: Sequence[str] = ()) -> None:
    """Print `body` under `header`; `columns`: the header names to print, in that order (None: all). With
    `text_last`, the last printed column (free text such as a verdict) is left-aligned, unpadded; `left`: the names
    of the columns (names, not figures) padded on the right. Raises KeyError naming a column the header lacks."""
    index = list(range(len(header)))
    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise KeyError(f"no column {missing[0]!r} in {list(header)}")
        index = [list(header).index(c) for c in columns]
    rows = [[header[i] for i in index]] + [[row[i] for i in index] for row in body]
    widths = [max(len(row[k]) for row in rows) for k in range(len(index))]
    for row in rows:
        aligned = [cell.ljust(width) if header[i] in left else cell.rjust(width)
                   for cell, width, i in zip(row, widths, index)]
        if text_last and aligned:
            aligned[-1] = row[-1]
        print(indent + "  ".join(aligned))
