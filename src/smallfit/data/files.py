"""Reading one data file (JSONL, CSV or Parquet) into a :class:`Split`, validated row by row.

Every problem with the input is a :class:`~smallfit.errors.DataError` naming the file, the
1-based line (Parquet: row) and the field.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.errors import DataError

FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File suffix -> format, for ``format="auto"``."""

NO_GOLD = ""
"""The label of a row without a gold label (never a real label: an empty label is refused)."""


@dataclass(frozen=True)
class Split:
    """Texts with their gold labels, and where they came from (for messages)."""

    texts: list[str]
    labels: list[str]
    source: str
    lines: list[int] = field(default_factory=list, repr=False)
    """1-based line (Parquet: row) of each example in its file; empty when unknown."""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def gold(self) -> np.ndarray:
        """Whether each row has a gold label (a boolean mask)."""
        return np.array([y != NO_GOLD for y in self.labels], dtype=bool)

    @property
    def n_gold(self) -> int:
        """How many rows have a gold label."""
        return sum(y != NO_GOLD for y in self.labels)


# ---------------------------------------------------------------------------------------------
# Reading one file


def read_split(
    path: str | Path,
    *,
    format: str = "auto",
    text_field: str = "text",
    label_field: str | None = "label",
    optional_labels: bool = False,
) -> Split:
    """Read and validate one JSONL, CSV or Parquet file of ``{text, label}`` records.

    With ``label_field=None`` only the texts are read (an unlabelled pool); labels are then
    :data:`NO_GOLD`. With ``optional_labels``, a row whose label is missing, null or empty (a
    CSV or Parquet file may lack the column altogether) has the label :data:`NO_GOLD`."""
    file = Path(path)
    if not file.exists():
        raise DataError("no such file", file=file)
    if file.is_dir():
        raise DataError("is a directory; expected a .jsonl, .csv or .parquet file", file=file)
    kind = resolve_format(file, format)
    fields = (text_field, label_field) if label_field is not None else (text_field,)
    read = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[kind]
    rows = read(file, _Fields(fields, optional_labels))
    if not rows:
        raise DataError("empty file: no examples", file=file)
    lines, texts, labels = (list(col) for col in zip(*rows, strict=True))
    return Split(texts=texts, labels=labels, source=str(file), lines=lines)


def resolve_format(file: Path, format: str) -> str:
    if format != "auto":
        if format not in FORMATS.values():
            raise DataError(
                f"unknown format {format!r}; use auto, jsonl, csv or parquet", file=file
            )
        return format
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        known = ", ".join(FORMATS)
        raise DataError(
            f"cannot tell the format from the suffix {file.suffix or '(none)'!r}; "
            f"use one of {known} or set the data format explicitly",
            file=file,
        )
    return kind


def _read_text(file: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", file=file) from exc
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"not valid UTF-8: byte {data[offset : offset + 1]!r} at byte offset {offset}; "
            "save the file as UTF-8",
            file=file,
            line=line,
        ) from exc


Row = tuple[int, str, str]


@dataclass(frozen=True)
class _Fields:
    """The fields to read: the text's, then the label's (if any); whether a label may be
    missing."""

    names: tuple[str, ...]
    optional_label: bool = False

    def required(self) -> tuple[str, ...]:
        return self.names[:1] if self.optional_label else self.names


def _read_jsonl(file: Path, fields: _Fields) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(_read_text(file).split("\n"), start=1):
        if not raw.strip():
            continue
        record = json_record(raw, file=file, line=number, required=fields.required())
        label = record.get(fields.names[1]) if len(fields.names) > 1 else None
        rows.append(_example(record[fields.names[0]], label, file, number, fields))
    return rows


def json_record(raw: str, *, file: Path, line: int, required: Sequence[str]) -> dict[str, Any]:
    """One line of a JSON Lines file as its object, holding every ``required`` field; else a
    :class:`DataError` naming the file, line and field."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        hint = ""
        if raw.lstrip().startswith("["):
            hint = "; expected JSON Lines (one object a line), not a JSON array"
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno}){hint}", file=file, line=line
        ) from exc
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, found {type_name(record)}", file=file, line=line)
    for name in required:
        if name not in record:
            raise DataError(
                f"missing field {name!r}; the record has {field_list(record)}",
                file=file,
                line=line,
                field=name,
            )
    return record


def _read_csv(file: Path, fields: _Fields) -> list[Row]:
    text = io.StringIO(_read_text(file), newline="")
    records = csv_records(
        text, file=file, names=fields.names, required=fields.required(), empty="no examples"
    )
    rows: list[Row] = []
    for number, (value, *label) in records:
        rows.append(_example(value, label[0] if label else None, file, number, fields))
    return rows


def csv_records(
    lines: Iterable[str],
    *,
    file: Path,
    names: Sequence[str],
    required: Sequence[str],
    empty: str,
) -> Iterator[tuple[int, list[str | None]]]:
    """Each data row of a CSV file's ``lines``: its first physical line (the header is line 1)
    and its values in the columns ``names`` (None where the header lacks one). Blank lines are
    skipped. A ``required`` column missing from the header, a row of another width, malformed
    CSV or text that is not UTF-8 is a :class:`DataError` naming the file and line; so is a
    file with no header row (``empty`` says what else it lacks)."""
    reader = csv.reader(lines)
    header: list[str] | None = None
    columns: list[int] = []
    end = 0  # last physical line consumed so far
    try:
        for record in reader:
            number, end = end + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header is None:
                header = record
                for name in required:
                    if name not in header:
                        raise DataError(
                            f"missing column {name!r} in the header row; "
                            f"the header has {field_list(header)}",
                            file=file,
                            line=number,
                            field=name,
                        )
                columns = [header.index(n) if n in header else -1 for n in names]
                continue
            if len(record) != len(header):
                raise DataError(
                    f"malformed row: {len(record)} column(s), the header has {len(header)}",
                    file=file,
                    line=number,
                )
            yield number, [record[c] if c >= 0 else None for c in columns]
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", file=file, line=reader.line_num) from exc
    except UnicodeDecodeError as exc:
        raise DataError("not valid UTF-8; save the file as UTF-8", file=file, line=end + 1) from exc
    if header is None:
        raise DataError(f"empty file: no header row and {empty}", file=file)


def _read_parquet(file: Path, fields: _Fields) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        for name in fields.required():
            if name not in names:
                raise DataError(
                    f"missing column {name!r}; the file has {field_list(names)}",
                    file=file,
                    field=name,
                )
        present = [name for name in fields.names if name in names]
        table = parquet.read(columns=present)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=file) from exc
    texts = table.column(fields.names[0]).to_pylist()
    has_label = len(present) > 1
    labels = table.column(fields.names[1]).to_pylist() if has_label else [None] * len(texts)
    return [
        _example(text, label, file, row, fields, unit="row")
        for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1)
    ]


# ---------------------------------------------------------------------------------------------
# Validating one record


def _example(
    text: Any, label: Any, file: Path, line: int, fields: _Fields, *, unit: str = ""
) -> Row:
    """Check one record's values; ``(line, text, label)`` with the label as a string
    (:data:`NO_GOLD` when ``fields`` names no label field, or the label is optional and
    missing)."""
    prefix = f"{unit} {line}: " if unit else ""
    names = fields.names

    def fail(message: str, name: str) -> DataError:
        return DataError(prefix + message, file=file, line=line, field=name)

    text = check_text(text, file=file, line=line, field=names[0], unit=unit)
    if len(names) == 1:
        return line, text, NO_GOLD
    if fields.optional_label and (label is None or (isinstance(label, str) and not label.strip())):
        return line, text, NO_GOLD
    if isinstance(label, bool):
        label = "true" if label else "false"
    elif isinstance(label, int):
        label = str(label)
    elif label is None:
        raise fail("label is null; every example needs a label", names[1])
    elif not isinstance(label, str):
        raise fail(f"label must be a string or an integer, found {type_name(label)}", names[1])
    if not label.strip():
        raise fail("empty label; every example needs a label", names[1])
    return line, text, label


def check_text(text: Any, *, file: Path, line: int, field: str, unit: str = "") -> str:
    """``text`` when it is a string with something besides whitespace; else a
    :class:`DataError` naming the file, the line (``unit`` "row": a Parquet row) and the field."""
    if isinstance(text, str) and text.strip():
        return text
    if not isinstance(text, str):
        message = f"text must be a string, found {type_name(text)}"
    else:
        message = "empty text" if not text else "text is only whitespace"
    prefix = f"{unit} {line}: " if unit else ""
    raise DataError(prefix + message, file=file, line=line, field=field)


def type_name(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {str: "a string", list: "a list", dict: "an object"}
    name = names.get(type(value), f"a {type(value).__name__}")
    shown = repr(value)
    return name if len(shown) > 40 or value is None else f"{name} ({shown})"


def field_list(names: Any) -> str:
    names = list(names)
    if not names:
        return "no fields"
    return "fields: " + ", ".join(repr(str(n)) for n in names)
