"""Loading and validating datasets (JSONL, CSV, Parquet) and carving splits.

Every problem with the input is a :class:`~smallfit.errors.DataError` naming the file, the
1-based line (Parquet: row) and the field. Splits are stratified and seeded with numpy, so the
same :class:`~smallfit.config.DataConfig` always gives the same splits.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.data.config import DataConfig
from smallfit.errors import DataError

FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File suffix -> format, for ``format="auto"``."""

# One independent random stream per carving step, so e.g. max_test never moves dev.
_HOLDOUT, _MAX_TRAIN, _DEV, _MAX_TEST, _HOLD_OUT_LABELS = 1, 2, 3, 4, 5


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


@dataclass(frozen=True)
class Dataset:
    """train (the pool the teacher labels), dev (carved from train, stratified), test."""

    train: Split
    dev: Split
    test: Split
    labels: list[str]
    out_of_scope: list[str] = field(default_factory=list)
    """Out-of-scope test texts: those labelled with the config's ``out_of_scope`` label (never a
    class), then the test texts of the held-out labels."""
    out_of_scope_labels: list[str] = field(default_factory=list)
    """Where each out-of-scope text came from: its label in the data (the ``out_of_scope``
    label, or the held-out label it had)."""
    held_out: list[str] = field(default_factory=list)
    """The labels held out (``hold_out_labels``), sorted; no split but the out-of-scope texts
    holds them."""


# ---------------------------------------------------------------------------------------------
# Reading one file


def read_split(
    path: str | Path,
    *,
    format: str = "auto",
    text_field: str = "text",
    label_field: str | None = "label",
) -> Split:
    """Read and validate one JSONL, CSV or Parquet file of ``{text, label}`` records.

    With ``label_field=None`` only the texts are read (an unlabelled pool); labels are then
    empty strings."""
    file = Path(path)
    if not file.exists():
        raise DataError("no such file", file=file)
    if file.is_dir():
        raise DataError("is a directory; expected a .jsonl, .csv or .parquet file", file=file)
    kind = _resolve_format(file, format)
    fields = (text_field, label_field) if label_field is not None else (text_field,)
    if kind == "jsonl":
        rows = _read_jsonl(file, fields)
    elif kind == "csv":
        rows = _read_csv(file, fields)
    else:
        rows = _read_parquet(file, fields)
    if not rows:
        raise DataError("empty file: no examples", file=file)
    lines, texts, labels = (list(col) for col in zip(*rows, strict=True))
    return Split(texts=texts, labels=labels, source=str(file), lines=lines)


def _resolve_format(file: Path, format: str) -> str:
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


def _read_jsonl(file: Path, fields: tuple[str, ...]) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(_read_text(file).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            hint = ""
            if not rows and raw.lstrip().startswith("["):
                hint = "; expected JSON Lines (one object a line), not a JSON array"
            raise DataError(
                f"invalid JSON ({exc.msg} at column {exc.colno}){hint}", file=file, line=number
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, found {_type_name(record)}", file=file, line=number
            )
        for name in fields:
            if name not in record:
                raise DataError(
                    f"missing field {name!r}; the record has {_field_list(record)}",
                    file=file,
                    line=number,
                    field=name,
                )
        label = record[fields[1]] if len(fields) > 1 else None
        rows.append(_example(record[fields[0]], label, file, number, fields))
    return rows


def _read_csv(file: Path, fields: tuple[str, ...]) -> list[Row]:
    reader = csv.reader(io.StringIO(_read_text(file), newline=""))
    rows: list[Row] = []
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
                for name in fields:
                    if name not in header:
                        raise DataError(
                            f"missing column {name!r} in the header row; "
                            f"the header has {_field_list(header)}",
                            file=file,
                            line=number,
                            field=name,
                        )
                columns = [header.index(name) for name in fields]
                continue
            if len(record) != len(header):
                raise DataError(
                    f"malformed row: {len(record)} column(s), the header has {len(header)}",
                    file=file,
                    line=number,
                )
            label = record[columns[1]] if len(columns) > 1 else None
            rows.append(_example(record[columns[0]], label, file, number, fields))
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", file=file, line=reader.line_num) from exc
    if header is None:
        raise DataError("empty file: no header row and no examples", file=file)
    return rows


def _read_parquet(file: Path, fields: tuple[str, ...]) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        for name in fields:
            if name not in names:
                raise DataError(
                    f"missing column {name!r}; the file has {_field_list(names)}",
                    file=file,
                    field=name,
                )
        table = parquet.read(columns=list(fields))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=file) from exc
    texts = table.column(fields[0]).to_pylist()
    labels = table.column(fields[1]).to_pylist() if len(fields) > 1 else [None] * len(texts)
    return [
        _example(text, label, file, row, fields, unit="row")
        for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1)
    ]


# ---------------------------------------------------------------------------------------------
# Validating one record


def _example(
    text: Any, label: Any, file: Path, line: int, fields: tuple[str, ...], *, unit: str = ""
) -> Row:
    """Check one record's values; ``(line, text, label)`` with the label as a string (empty when
    ``fields`` names no label field)."""
    prefix = f"{unit} {line}: " if unit else ""

    def fail(message: str, name: str) -> DataError:
        return DataError(prefix + message, file=file, line=line, field=name)

    if not isinstance(text, str):
        raise fail(f"text must be a string, found {_type_name(text)}", fields[0])
    if not text.strip():
        raise fail("empty text" if not text else "text is only whitespace", fields[0])
    if len(fields) == 1:
        return line, text, ""
    if isinstance(label, bool):
        label = "true" if label else "false"
    elif isinstance(label, int):
        label = str(label)
    elif label is None:
        raise fail("label is null; every example needs a label", fields[1])
    elif not isinstance(label, str):
        raise fail(f"label must be a string or an integer, found {_type_name(label)}", fields[1])
    if not label.strip():
        raise fail("empty label; every example needs a label", fields[1])
    return line, text, label


def _type_name(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {str: "a string", list: "a list", dict: "an object"}
    name = names.get(type(value), f"a {type(value).__name__}")
    shown = repr(value)
    return name if len(shown) > 40 or value is None else f"{name} ({shown})"


def _field_list(names: Any) -> str:
    names = list(names)
    if not names:
        return "no fields"
    return "fields: " + ", ".join(repr(str(n)) for n in names)


# ---------------------------------------------------------------------------------------------
# Stratified, seeded splitting


def _rng(seed: int, step: int) -> np.random.Generator:
    # SeedSequence needs non-negative entropy; fold negative seeds in without collisions.
    folded = 2 * seed if seed >= 0 else -2 * seed - 1
    return np.random.default_rng([folded, step])


def _allocate(
    counts: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per-class sizes summing to ``total`` (when lo/hi allow), proportional to ``counts``."""
    quota = total * counts / counts.sum()
    alloc = np.clip(np.floor(quota).astype(np.int64), lo, hi)
    tiebreak = rng.random(len(counts))
    while (diff := total - int(alloc.sum())) != 0:
        movable = np.flatnonzero(alloc < hi if diff > 0 else alloc > lo)
        if movable.size == 0:
            break
        gap = (quota - alloc)[movable]
        # largest shortfall first when adding, largest surplus first when removing
        order = np.lexsort((tiebreak[movable], -gap if diff > 0 else gap))
        alloc[movable[order[: abs(diff)]]] += 1 if diff > 0 else -1
    return alloc


def _pick(labels: list[str], alloc_for: Any, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified sample; ``alloc_for(counts)`` gives per-class sizes."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    alloc = alloc_for(counts)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    chosen = [
        rng.choice(order[start : start + count], size=k, replace=False)
        for start, count, k in zip(starts, counts, alloc, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _subset(split: Split, index: np.ndarray, source: str) -> Split:
    idx = index.tolist()
    return Split(
        texts=[split.texts[i] for i in idx],
        labels=[split.labels[i] for i in idx],
        source=source,
        lines=[split.lines[i] for i in idx] if split.lines else [],
    )


def _carve(
    split: Split, fraction: float, rng: np.random.Generator, name: str
) -> tuple[Split, Split]:
    """Stratified ``(rest, held)`` with ``held`` about ``fraction`` of ``split``.

    Every class keeps at least one example in ``rest`` (so a single-example class stays there).
    """

    def alloc_for(counts: np.ndarray) -> np.ndarray:
        hi = counts - 1
        total = min(max(1, round(len(split) * fraction)), int(hi.sum()))
        return _allocate(counts, total, np.zeros_like(counts), hi, rng)

    held = _pick(split.labels, alloc_for, rng)
    if held.size == 0:
        raise DataError(
            f"too few examples to carve a {name} set: no label occurs twice in train",
            file=split.source,
        )
    rest = np.setdiff1d(np.arange(len(split)), held, assume_unique=True)
    return _subset(split, rest, split.source), _subset(split, held, f"{split.source} ({name})")


def _slice(split: Split, size: int, rng: np.random.Generator) -> Split:
    """A stratified sample of ``size`` examples; every class kept when ``size`` allows."""
    if size >= len(split):
        return split

    def alloc_for(counts: np.ndarray) -> np.ndarray:
        lo = np.ones_like(counts) if size >= len(counts) else np.zeros_like(counts)
        return _allocate(counts, size, lo, counts, rng)

    return _subset(split, _pick(split.labels, alloc_for, rng), split.source)


# ---------------------------------------------------------------------------------------------
# The whole dataset


def load_dataset(config: DataConfig) -> Dataset:
    """Read train (and test), validate the labels, and carve the seeded stratified splits.

    Order: hold out test (only when ``config.test`` is None) from the full train file, then
    the held-out labels (``hold_out_labels``) leave train and test (their test rows become
    out-of-scope texts), then ``max_train`` slices what is left, then dev is carved from that
    slice; ``max_test`` slices test. So the held-out test set does not move when ``max_train``
    or the held-out labels change.
    """

    def read(path: Path) -> Split:
        return read_split(
            path,
            format=config.format,
            text_field=config.text_field,
            label_field=config.label_field,
        )

    oos = [config.out_of_scope] if config.out_of_scope is not None else []
    train, out_of_scope = _split_labels(read(config.train), oos)
    _check_label_count(train, config.label_field)
    test_file = read(config.test) if config.test is not None else None

    if test_file is None:
        train, test = _carve(train, config.test_fraction, _rng(config.seed, _HOLDOUT), "test")
    else:
        test, out_of_scope = _split_labels(test_file, oos)
        _check_test_labels(test, set(train.labels), config.label_field, train.source)
    held = _held_out_labels(config, sorted(set(train.labels)), train.source)
    if held:
        train, _ = _split_labels(train, held)
        test, held_test = _split_labels(test, held)
        out_of_scope = Split(
            texts=[*out_of_scope.texts, *held_test.texts],
            labels=[*out_of_scope.labels, *held_test.labels],
            source=test.source,
        )
    if config.max_train is not None:
        n_labels = len(set(train.labels))
        if config.max_train < n_labels:
            raise DataError(
                f"max_train={config.max_train} is smaller than the number of labels "
                f"({n_labels}); raise it so every label keeps an example",
                file=train.source,
                field=config.label_field,
            )
        train = _slice(train, config.max_train, _rng(config.seed, _MAX_TRAIN))
    train, dev = _carve(train, config.dev_fraction, _rng(config.seed, _DEV), "dev")
    if config.max_test is not None:
        test = _slice(test, config.max_test, _rng(config.seed, _MAX_TEST))
    return Dataset(
        train=train,
        dev=dev,
        test=test,
        labels=sorted(set(train.labels)),
        out_of_scope=out_of_scope.texts,
        out_of_scope_labels=out_of_scope.labels,
        held_out=held,
    )


def _held_out_labels(config: DataConfig, labels: list[str], source: str) -> list[str]:
    """The labels ``config.hold_out_labels`` names, or that many drawn with the data seed."""
    want = config.hold_out_labels
    if want is None:
        return []
    key = "hold_out_labels"
    count = want if isinstance(want, int) else len(want)
    if count > len(labels) - 2:
        raise DataError(
            f"{key} holds out {count} of the {len(labels)} labels; at least 2 must remain "
            f"to train a classifier (hold out at most {max(len(labels) - 2, 0)})",
            file=source,
            field=key,
        )
    if isinstance(want, int):
        rng = _rng(config.seed, _HOLD_OUT_LABELS)
        return sorted(str(x) for x in rng.choice(labels, size=want, replace=False))
    unknown = [name for name in want if name not in labels]
    if unknown:
        raise DataError(
            f"{key} names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a label "
            f"of train (labels: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''})",
            file=source,
            field=key,
        )
    return sorted(want)


def _split_labels(split: Split, labels: list[str]) -> tuple[Split, Split]:
    """(rows whose label is not in ``labels``, rows whose label is)."""
    chosen = set(labels)
    held = np.array([y in chosen for y in split.labels], dtype=bool)
    return _subset(split, np.flatnonzero(~held), split.source), _subset(
        split, np.flatnonzero(held), split.source
    )


def _check_label_count(train: Split, label_field: str) -> None:
    distinct = sorted(set(train.labels))
    if len(distinct) < 2:
        raise DataError(
            f"train has only 1 distinct label ({distinct[0]!r}); a classifier needs at least 2",
            file=train.source,
            field=label_field,
        )


def _check_test_labels(test: Split, known: set[str], label_field: str, train_source: str) -> None:
    lines: list[int | None] = list(test.lines) or [None] * len(test)
    for line, label in zip(lines, test.labels, strict=True):
        if label not in known:
            unseen = sorted(set(test.labels) - known)
            more = f" ({len(unseen)} unseen labels in all)" if len(unseen) > 1 else ""
            raise DataError(
                f"label {label!r} never occurs in train ({train_source}){more}",
                file=test.source,
                line=line,
                field=label_field,
            )
