"""Reading a JSONL, CSV or Parquet file row by row in bounded memory (batch prediction).

:func:`stream_rows` yields one :class:`InputRow` at a time: its 1-based line (Parquet: row), its
id (the id field's value, when the row has one) and its text, checked as :mod:`.files` checks a
training file. A bad row is a :class:`~smallfit.errors.DataError` naming the file, line and
field, raised when the reader reaches it: every row before it has been yielded.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfit.data.files import (
    check_text,
    csv_records,
    field_list,
    json_record,
    resolve_format,
    type_name,
)
from smallfit.errors import DataError

PARQUET_BATCH = 1024


@dataclass(frozen=True)
class InputRow:
    """One row to answer."""

    line: int
    """1-based line of the file (Parquet: row)."""
    id: Any
    """The id field's value (a JSON scalar), or None when the row has no id."""
    text: str


def input_format(path: str | Path, format: str = "auto") -> str:
    """``jsonl``, ``csv`` or ``parquet``: ``format``, or the file's suffix for ``auto``; a
    missing file or a directory is an error naming it."""
    file = Path(path)
    if not file.exists():
        raise DataError("no such file", file=file)
    if file.is_dir():
        raise DataError("is a directory; expected a .jsonl, .csv or .parquet file", file=file)
    return resolve_format(file, format)


def count_rows(path: str | Path, format: str = "auto") -> int | None:
    """How many rows the file has, cheaply, for a progress bar: non-blank lines of JSONL,
    Parquet's metadata; None for CSV (a quoted field may span lines)."""
    file = Path(path)
    kind = input_format(file, format)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(file).metadata.num_rows)
        except Exception:  # the reader names the problem when it gets there
            return None
    if kind == "csv":
        return None
    count = 0
    with open(file, "rb") as handle:
        for raw in handle:
            count += bool(raw.strip())
    return count


def stream_rows(
    path: str | Path, *, format: str = "auto", text_field: str = "text", id_field: str = "id"
) -> Iterator[InputRow]:
    """The file's rows in order (see the module docstring)."""
    file = Path(path)
    kind = input_format(file, format)
    read = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[kind]
    yield from read(file, text_field, id_field)


def _id(value: Any, file: Path, line: int, field: str) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise DataError(
        f"an id must be a string or a number, found {type_name(value)}",
        file=file,
        line=line,
        field=field,
    )


def _jsonl(file: Path, text_field: str, id_field: str) -> Iterator[InputRow]:
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not valid UTF-8: byte {raw[exc.start : exc.start + 1]!r} at column "
                    f"{exc.start + 1}; save the file as UTF-8",
                    file=file,
                    line=number,
                ) from exc
            if not line.strip():
                continue
            record = json_record(line, file=file, line=number, required=(text_field,))
            text = check_text(record[text_field], file=file, line=number, field=text_field)
            yield InputRow(number, _id(record.get(id_field), file, number, id_field), text)


def _csv(file: Path, text_field: str, id_field: str) -> Iterator[InputRow]:
    with open(file, encoding="utf-8-sig", newline="") as handle:
        records = csv_records(
            handle, file=file, names=(text_field, id_field), required=(text_field,), empty="no rows"
        )
        for number, (value, ident) in records:
            text = check_text(value, file=file, line=number, field=text_field)
            yield InputRow(number, ident, text)


def _parquet(file: Path, text_field: str, id_field: str) -> Iterator[InputRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=file) from exc
    if text_field not in names:
        raise DataError(
            f"missing column {text_field!r}; the file has {field_list(names)}",
            file=file,
            field=text_field,
        )
    columns = [text_field, *([id_field] if id_field in names else [])]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, ident in zip(texts, ids, strict=True):
                row += 1
                checked = check_text(text, file=file, line=row, field=text_field, unit="row")
                yield InputRow(row, _id(ident, file, row, id_field), checked)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=file, line=row + 1) from exc
