"""Reading a user's table (CSV, JSONL or Parquet) into numbered rows of plain values.

Why our own reader rather than ``datasets.load_dataset``: every problem must be reported as
``file:line: key: reason`` with the line a person sees in an editor, the bytes must be strict
UTF-8 (a Latin-1 export silently turned into mojibake would become training data), and nothing
may be cached or written on the side. Line numbers are those of the file: for CSV the header
is line 1 and a record's number is the line it *starts* on; for JSONL it is the line itself;
Parquet has no lines, so a row's number is its 1-based row index (said so in messages as
``row N``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.errors import FormatError
from corpus.store import json_object

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Row:
    """One record of the table: where it is (``where`` = ``file:line``) and its cells."""

    where: str
    line: int
    cells: dict[str, Any]


def table_kind(path: Path) -> str:
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FormatError(f"{path}: unknown table type {path.suffix!r}; expected .csv, .jsonl or .parquet")
    return kind


def read_table(path: Path) -> list[Row]:
    """All rows of ``path``; a :class:`FormatError` (``file:line: reason``) on the first unreadable one."""
    path = Path(path)
    kind = table_kind(path)
    if kind == "parquet":
        return _read_parquet(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: table not found") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the table: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FormatError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                          "re-export the table as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a BOM from spreadsheet exports is not part of the first header
    return _read_csv(path, text) if kind == "csv" else _read_jsonl(path, text)


def _read_csv(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise FormatError(f"{path}:1: empty table (no header line)") from None
    except csv.Error as exc:
        raise FormatError(f"{path}:1: not valid CSV: {exc}") from None
    names = [h.strip() for h in header]
    seen: set[str] = set()
    for name in names:
        if not name:
            raise FormatError(f"{path}:1: a column has an empty name")
        if name in seen:
            raise FormatError(f"{path}:1: {name}: column named twice")
        seen.add(name)
    rows, start = [], reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise FormatError(f"{path}:{start}: not valid CSV: {exc}") from None
        if values and any(v.strip() for v in values):
            if len(values) != len(names):
                raise FormatError(f"{path}:{start}: {len(values)} fields, the header has {len(names)}")
            rows.append(Row(f"{path}:{start}", start, dict(zip(names, values, strict=True))))
        start = reader.line_num + 1
    return rows


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        rows.append(Row(where, number, json_object(line, where)))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with `datasets`
        raise FormatError(f"{path}: reading Parquet needs the 'pyarrow' package") from None
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: table not found") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise FormatError(f"{path}: not a readable Parquet file: {exc}") from None
    records = table.to_pylist()
    return [Row(f"{path}: row {i}", i, {k: _plain(v) for k, v in record.items()})
            for i, record in enumerate(records, start=1)]


def _plain(value: Any) -> Any:
    """Parquet values as JSON-able ones (timestamps, decimals and bytes become text)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
