"""The data of an ``extract`` task: each text's fields (a JSON object of declared fields, each a
string or a list of strings) and, where known, the character spans they were read from.

A row is ``{"text": ..., "fields": {name: value | [values]}, "spans": [{"start", "end",
"field"}]}`` (``spans`` optional). Every problem is a :class:`~smallfit.errors.DataError` naming
the file, the line and the field: a field not in the schema, a span outside its text, a span
whose text differs from its value. Values are kept in the order they appear; a field given once
as a string and once as a list is the same thing (a list of one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallfit.errors import DataError
from smallfit.fields import FieldSchema, Span, Values, align

__all__ = ["FieldDoc", "FieldSchema", "FieldSplit", "Span", "Values", "align", "read_field_split"]


@dataclass(frozen=True)
class FieldDoc:
    """One text's gold (or teacher) fields and, where known, their spans."""

    values: Values
    spans: tuple[Span, ...] | None = None


@dataclass(frozen=True)
class FieldSplit:
    """Texts with their fields (None where a row has no gold), and where they came from."""

    texts: list[str]
    docs: list[FieldDoc | None]
    source: str
    lines: list[int] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_gold(self) -> int:
        return sum(d is not None for d in self.docs)

    def subset(self, index: Sequence[int], source: str | None = None) -> FieldSplit:
        return FieldSplit(
            [self.texts[i] for i in index],
            [self.docs[i] for i in index],
            source or self.source,
            [self.lines[i] for i in index] if self.lines else [],
        )


def values_of(raw: Any, *, file: Path, line: int, where: str) -> Values:
    """A ``fields`` object as name -> values, checked: an object of strings or string lists."""
    if not isinstance(raw, dict):
        raise DataError(
            f"must be an object, got {type(raw).__name__}", file=file, line=line, field=where
        )
    out: Values = {}
    for name, value in raw.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise DataError(
                "must be a string or a list of strings",
                file=file,
                line=line,
                field=f"{where}.{name}",
            )
        kept = [v for v in items if v.strip()]
        if kept:
            out[str(name)] = kept
    return out


def check_values(
    values: Values, schema: FieldSchema | None, *, file: Path, line: int, where: str
) -> None:
    """A field not in ``schema`` is an error naming it and the declared ones."""
    if schema is None:
        return
    for name in values:
        if name not in schema.names:
            declared = ", ".join(schema.names[:12]) + (" ..." if len(schema) > 12 else "")
            raise DataError(
                f"field '{name}' is not in the schema ({declared})",
                file=file,
                line=line,
                field=f"{where}.{name}",
            )


def spans_of(raw: Any, text: str, values: Values, *, file: Path, line: int) -> tuple[Span, ...]:
    """A ``spans`` list, checked against its text and the row's values: inside the text, of a
    field the row has, and ``text[start:end]`` equal to that field's value (the k-th span of a
    field holds its k-th value)."""
    if not isinstance(raw, list):
        raise DataError("must be a list", file=file, line=line, field="spans")
    spans, seen = [], dict.fromkeys(values, 0)
    for k, item in enumerate(raw):
        where = f"spans[{k}]"
        ok = isinstance(item, dict) and {"start", "end", "field"} <= set(item)
        start, end, name = (
            (item.get("start"), item.get("end"), item.get("field")) if ok else (None,) * 3
        )
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(name, str)):
            raise DataError(
                "must be {start: int, end: int, field: str}", file=file, line=line, field=where
            )
        if not 0 <= start < end <= len(text):
            raise DataError(
                f"span {start}:{end} is outside its text ({len(text)} characters)",
                file=file,
                line=line,
                field=where,
            )
        if name not in values:
            raise DataError(
                f"span of field '{name}', which the row's fields do not have",
                file=file,
                line=line,
                field=where,
            )
        if seen[name] >= len(values[name]):
            raise DataError(
                f"more spans of field '{name}' than it has values ({len(values[name])})",
                file=file,
                line=line,
                field=where,
            )
        expected, got = values[name][seen[name]], text[start:end]
        if got != expected:
            raise DataError(
                f"the span's text {got!r} differs from the value {expected!r} of field '{name}'",
                file=file,
                line=line,
                field=where,
            )
        seen[name] += 1
        spans.append(Span(start, end, name))
    return tuple(spans)


def read_field_split(
    path: str | Path,
    *,
    schema: FieldSchema | None,
    text_field: str = "text",
    fields_field: str = "fields",
    spans_field: str = "spans",
    optional: bool = False,
) -> FieldSplit:
    """Read and check a JSONL file of an extract task. Without ``optional``, every row needs
    ``fields`` (an empty object for a text with none); with it, a row without them has no gold.
    A row's ``spans``, when present, are checked against the text and the values."""
    file = Path(path)
    if not file.is_file():
        raise DataError("no such file" if not file.exists() else "not a file", file=file)
    if file.suffix.lower() not in (".jsonl", ".json"):
        raise DataError("an extract task reads JSONL (a JSON object a line)", file=file)
    texts: list[str] = []
    docs: list[FieldDoc | None] = []
    lines: list[int] = []
    with file.open(encoding="utf-8-sig") as handle:
        for number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            try:
                row = json.loads(raw_line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", file=file, line=number) from exc
            if not isinstance(row, dict):
                raise DataError("must be a JSON object", file=file, line=number)
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                raise DataError("missing or empty text", file=file, line=number, field=text_field)
            docs.append(_doc(row, text, schema, file, number, fields_field, spans_field, optional))
            texts.append(text)
            lines.append(number)
    if not texts:
        raise DataError("empty file: no examples", file=file)
    return FieldSplit(texts, docs, str(file), lines)


def _doc(
    row: dict[str, Any],
    text: str,
    schema: FieldSchema | None,
    file: Path,
    line: int,
    fields_field: str,
    spans_field: str,
    optional: bool,
) -> FieldDoc | None:
    raw = row.get(fields_field)
    if raw is None:
        if optional:
            return None
        raise DataError(
            "missing field 'fields' (an object; {} for none)",
            file=file,
            line=line,
            field=fields_field,
        )
    values = values_of(raw, file=file, line=line, where=fields_field)
    check_values(values, schema, file=file, line=line, where=fields_field)
    spans = row.get(spans_field)
    if spans is None:
        return FieldDoc(values)
    return FieldDoc(values, spans_of(spans, text, values, file=file, line=line))


def with_gold_lists(declared: FieldSchema, docs: Iterable[FieldDoc | None]) -> FieldSchema:
    """``declared`` in its order, a field the gold ``docs`` hold two values of made a list (a
    list of names states no types)."""
    lists = {n for d in docs if d is not None for n, v in d.values.items() if len(v) > 1}
    return FieldSchema.of(declared.names, lists & set(declared.names))


def schema_of(splits: Iterable[FieldSplit]) -> FieldSchema:
    """The fields the gold of ``splits`` uses, in order of first appearance; a field that
    ever holds two values is a list."""
    names: dict[str, None] = {}
    lists = set()
    for split in splits:
        for doc in split.docs:
            for name, values in (doc.values if doc else {}).items():
                names.setdefault(name)
                if len(values) > 1:
                    lists.add(name)
    if not names:
        raise DataError("no row has any field: there is nothing to extract")
    return FieldSchema.of(names, lists)


@dataclass(frozen=True)
class FieldDataset:
    """An extract task's splits and its field schema."""

    train: FieldSplit
    dev: FieldSplit
    test: FieldSplit
    schema: FieldSchema
    leaked: int = 0

    @property
    def labels(self) -> list[str]:
        """The field names (what a run's data summary lists)."""
        return list(self.schema.names)

    @property
    def out_of_scope(self) -> list[str]:
        """No out-of-scope texts (a classify task's notion)."""
        return []


def load_field_dataset(config: Any, *, gold_required: bool) -> FieldDataset:
    """Read an extract task's data as ``config`` (a DataConfig) says: train, and test (else
    ``test_fraction`` of train); dev is a seeded random ``dev_fraction`` of train; the
    ``max_train``/``max_test`` slices are seeded random too. The schema is ``config.fields``,
    else the fields the gold rows use."""
    import numpy as np

    declared = FieldSchema.of(config.fields) if config.fields else None

    def read(path: Path) -> FieldSplit:
        return read_field_split(
            path,
            schema=declared,
            text_field=config.text_field,
            fields_field=config.fields_field,
            spans_field=config.spans_field,
            optional=not gold_required,
        )

    rng = np.random.default_rng(config.seed)
    pool = read(Path(config.train))
    if config.test is not None:
        test = read(Path(config.test))
    else:
        order = rng.permutation(len(pool))
        cut = max(1, round(config.test_fraction * len(pool)))
        test = pool.subset(sorted(order[:cut]), f"{pool.source} (test carve)")
        pool = pool.subset(sorted(order[cut:]))
    if config.max_test is not None and len(test) > config.max_test:
        test = test.subset(sorted(rng.permutation(len(test))[: config.max_test]))
    if config.max_train is not None and len(pool) > config.max_train:
        pool = pool.subset(sorted(rng.permutation(len(pool))[: config.max_train]))
    order = rng.permutation(len(pool))
    cut = max(1, round(config.dev_fraction * len(pool)))
    dev = pool.subset(sorted(order[:cut]), f"{pool.source} (dev carve)")
    train = pool.subset(sorted(order[cut:]))
    if not len(train) or not len(dev):
        raise DataError(
            f"{len(pool)} training rows leave {len(train)} to train on and {len(dev)} for dev: "
            "too few (add rows, or lower data.dev_fraction)",
            file=pool.source,
        )
    if declared is None:
        schema = schema_of([train, dev, test])  # the fields used, and which hold lists
    else:
        schema = with_gold_lists(declared, (d for s in (train, dev, test) for d in s.docs))
    from smallfit.data.dataset import normalise_text

    seen = {normalise_text(t) for t in (*train.texts, *dev.texts)}
    leaked = sum(normalise_text(t) in seen for t in test.texts)
    if leaked and config.leakage == "error":
        raise DataError(
            f"{leaked} test texts are also in train or dev (data.leakage: error)",
            file=test.source,
        )
    return FieldDataset(train, dev, test, schema, leaked)
