"""An extract task's field schema: the declared fields, which of them are lists, and the
character spans values are read from. Below every package (models save it in their manifest,
data checks rows against it, evaluation scores by it)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Values = dict[str, list[str]]
"""A document's fields: name -> its values in text order (a single-valued field has one)."""


@dataclass(frozen=True)
class Span:
    """Characters ``start:end`` of a text hold a value of ``field``."""

    start: int
    end: int
    field: str


@dataclass(frozen=True)
class FieldSchema:
    """The declared fields, in order, and which of them are lists (the others are strings)."""

    names: tuple[str, ...]
    lists: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a field schema needs at least one field")
        repeated = sorted({n for n in self.names if self.names.count(n) > 1})
        if repeated:
            raise ValueError(f"fields repeated: {repeated}")
        unknown = sorted(self.lists - set(self.names))
        if unknown:
            raise ValueError(f"list fields not declared: {unknown}")

    @classmethod
    def of(cls, names: Iterable[str], lists: Iterable[str] = ()) -> FieldSchema:
        return cls(tuple(names), frozenset(lists))

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any]) -> FieldSchema:
        """The fields of a JSON schema ``{"type": "object", "properties": {name: {"type":
        "string"} | {"type": "array", "items": {"type": "string"}}}}``."""
        props = schema.get("properties")
        if not isinstance(props, Mapping) or not props:
            raise ValueError("the JSON schema has no 'properties'")
        lists = []
        for name, spec in props.items():
            kind = spec.get("type") if isinstance(spec, Mapping) else None
            kinds = set(kind) if isinstance(kind, list) else {kind}
            kinds.discard("null")
            if kinds == {"array"}:
                items = spec.get("items") if isinstance(spec, Mapping) else None
                if not isinstance(items, Mapping) or items.get("type") != "string":
                    raise ValueError(f"property '{name}': an array must hold strings")
                lists.append(name)
            elif kinds != {"string"}:
                raise ValueError(f"property '{name}': a field is a string or an array of strings")
        return cls(tuple(props), frozenset(lists))

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema an answer must match: every field optional, no other key."""
        string = {"type": "string"}
        props = {n: {"type": "array", "items": string} if n in self.lists else string for n in self}
        return {"type": "object", "properties": props, "additionalProperties": False}

    def __iter__(self) -> Any:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "lists": sorted(self.lists)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> FieldSchema:
        return cls.of(obj["names"], obj.get("lists", ()))

    def render(self, values: Values) -> dict[str, str | list[str]]:
        """``values`` as the answer's JSON object: a list field as a list, a string field as
        its first value (further values of a string field are dropped)."""
        return {n: (values[n] if n in self.lists else values[n][0]) for n in self if values.get(n)}


_SPACE = re.compile(r"\s+")


def align(text: str, values: Values) -> tuple[list[Span], list[tuple[str, str]]]:
    """Where in ``text`` each value is: the first occurrence not already taken, matched
    exactly, then ignoring case and runs of spaces. Values not in the text are returned apart
    (field, value), never invented."""
    taken = [False] * len(text)
    spans, missing = [], []
    pairs = [(name, value) for name, items in values.items() for value in items]
    # longer values first, so "12 pm" is placed before a "2" could take its digit
    for name, value in sorted(pairs, key=lambda p: -len(p[1].strip())):
        found = _find_loose(text, value, taken, words=True) or _find_loose(text, value, taken)
        if found is None:
            missing.append((name, value))
            continue
        start, end = found
        taken[start:end] = [True] * (end - start)
        spans.append(Span(start, end, name))
    spans.sort(key=lambda s: (s.start, s.end))
    return spans, missing


def _find_loose(
    text: str, value: str, taken: list[bool], *, words: bool = False
) -> tuple[int, int] | None:
    """The first free occurrence of ``value`` in ``text``, ignoring case and runs of spaces;
    with ``words``, only one not inside a longer word. An exact-case match comes first."""
    parts = [re.escape(w) for w in _SPACE.split(value.strip()) if w]
    if not parts:
        return None
    pattern = r"\s+".join(parts)
    if words:
        pattern = rf"(?<!\w){pattern}(?!\w)"
    for flags in (0, re.IGNORECASE):
        for match in re.finditer(pattern, text, flags):
            if not any(taken[match.start() : match.end()]):
                return match.start(), match.end()
    return None
