"""A generative extractor's answer: the compact JSON object it is trained to write, the GBNF
grammar that makes every answer parse, and the parser that reads an answer back with where each
field's value sits in it (so a value's tokens, and their probabilities, can be found).

The answer is ``{"field":["value",...],"other":"value"}``: no spaces, a list field as a list of
strings and a string field as a string, fields in the order their values appear in the text.
The grammar allows exactly that shape over the schema's field names, in any order. Reading an
answer back, a list field written twice is one list (its values joined), a string field
written twice keeps its first value, and an empty string is no value. Nothing here imports a
model runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from smallfit.fields import FieldSchema, Span, Values

_CHAR = r"""[^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )"""
_STRING = f'string ::= "\\"" ( {_CHAR} )* "\\""'


def answer_text(values: Values, schema: FieldSchema, spans: Sequence[Span] = ()) -> str:
    """The answer a generative student learns for a document: its fields in the order of their
    first span in the text (fields without one after them, in schema order)."""
    rendered = schema.render(values)
    first: dict[str, int] = {}
    for span in sorted(spans, key=lambda s: s.start):
        first.setdefault(span.field, span.start)
    order = sorted(rendered, key=lambda n: (first.get(n, 1 << 30), schema.names.index(n)))
    return json.dumps({n: rendered[n] for n in order}, ensure_ascii=False, separators=(",", ":"))


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def grammar(schema: FieldSchema) -> str:
    """A GBNF grammar (llama.cpp's) for :func:`answer_text`'s shape over ``schema``."""
    pairs = " | ".join(
        f"{_literal(json.dumps(n, ensure_ascii=False) + ':')} "
        + ("list" if n in schema.lists else "string")
        for n in schema
    )
    return "\n".join(
        [
            'root ::= "{" ( pair ( "," pair )* )? "}"',
            f"pair ::= {pairs}",
            'list ::= "[" ( string ( "," string )* )? "]"',
            _STRING.strip(),
            "",
        ]
    )


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def parse_answer(text: str, schema: FieldSchema) -> tuple[Values, dict[str, list[tuple[int, int]]]]:
    """The fields of an answer, and per field the character ranges of its values in ``text``.
    Raises ValueError (with the reason) for text that is not a JSON object of the schema's
    fields, each a string or a list of strings as declared."""
    decoder = json.JSONDecoder()
    values: Values = {}
    ranges: dict[str, list[tuple[int, int]]] = {}
    i = _skip(text, 0)
    if not text.startswith("{", i):
        raise ValueError("the answer is not a JSON object")
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        return values, ranges
    while True:
        try:
            key, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON at character {i}: {exc.msg}") from None
        if not isinstance(key, str) or key not in schema.names:
            raise ValueError(f"field {key!r} is not in the schema")
        i = _skip(text, i)
        if not text.startswith(":", i):
            raise ValueError(f"no ':' after field {key!r}")
        start = i = _skip(text, i + 1)
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field {key!r}: not JSON at character {i}: {exc.msg}") from None
        if key in schema.lists:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"field {key!r} must be a list of strings")
            items = value
        elif isinstance(value, str):
            items = [value]
        else:
            raise ValueError(f"field {key!r} must be a string")
        items = [v for v in items if v]  # an empty string is no value
        if key not in schema.lists:  # a string field written twice keeps its first value
            items = items[:1] if key not in values else []
        if items:
            values.setdefault(key, []).extend(items)
            ranges.setdefault(key, []).append((start, i))
        i = _skip(text, i)
        if text.startswith("}", i):
            if _skip(text, i + 1) != len(text):
                raise ValueError("text after the JSON object")
            return values, ranges
        if not text.startswith(",", i):
            raise ValueError(f"expected ',' or '}}' at character {i}")
        i = _skip(text, i + 1)
