"""The prompt an LLM teacher of an ``extract`` task sees: instruction, field list, worked
examples, and the JSON schema its answer must match.

An answer is read strictly: text that is not JSON, or JSON that breaks the schema (a field not
declared, a list where a string is due), is counted as such and never guessed at. A field the
answer sets to null, or to an empty string, has no value. The stored answer is the values as
compact JSON (field -> list of values, in schema order); the labeller keeps it beside the
reply as it came.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smallfit.errors import SmallfitError
from smallfit.fields import FieldSchema, Values
from smallfit.hashing import hash_json
from smallfit.llm.prompt import check_template, schema_format, template_slots, worked_chat

if TYPE_CHECKING:
    import numpy as np

    from smallfit.llm.client import Reply

DEFAULT_FIELD_INSTRUCTION = (
    "Extract these fields from the text. Copy each value exactly as the text writes it, and "
    "leave out the fields the text does not mention.\n\n{fields}\n\n"
    "Answer with a JSON object whose keys are among these fields.\n\nText: {text}"
)

NOT_JSON, OFF_SCHEMA = "not-json", "off-schema"
"""The statuses of an answer that could not be read: not JSON, or JSON that breaks the schema."""

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


class AnswerError(ValueError):
    """An answer that cannot be read as the schema's fields; ``status`` says which way."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def read_values(content: str | None, schema: FieldSchema) -> Values:
    """The fields an answer gives (a JSON object, optionally in a ```json fence). Raises
    :class:`AnswerError` for one that is not JSON or breaks the schema."""
    text = (content or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise AnswerError(NOT_JSON, f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise AnswerError(OFF_SCHEMA, f"a JSON {type(obj).__name__}, not an object")
    values: Values = {}
    for name, value in obj.items():
        if name not in schema.names:
            raise AnswerError(OFF_SCHEMA, f"field {name!r} is not in the schema")
        if value is None:
            continue
        if name in schema.lists:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise AnswerError(OFF_SCHEMA, f"field {name!r} must be a list of strings")
            items = [v for v in value if v.strip()]
        elif isinstance(value, str):
            items = [value] if value.strip() else []
        else:
            raise AnswerError(OFF_SCHEMA, f"field {name!r} must be a string")
        if items:
            values[name] = items
    return {n: values[n] for n in schema.names if n in values}


def answer_schema(schema: FieldSchema, *, strict: bool) -> dict[str, Any]:
    """The JSON schema sent with the request. ``strict`` (OpenAI's structured outputs): every
    field present, null when the text lacks it. Otherwise every field is optional, which keeps
    a grammar-constrained answer short."""
    if not strict:
        return schema.json_schema()
    string: dict[str, Any] = {"type": ["string", "null"]}
    props = {
        n: {"type": ["array", "null"], "items": {"type": "string"}} if n in schema.lists else string
        for n in schema
    }
    return {
        "type": "object",
        "properties": props,
        "required": list(schema.names),
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class FieldPrompt:
    """Everything that turns a text into the chat messages an LLM extracts fields from."""

    template: str
    schema: FieldSchema
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: list[tuple[str, Values]] = field(default_factory=list)
    answer: str = "json-schema"
    max_tokens: int = 256
    seed: int = 0
    context: list[dict[str, Any]] = field(default_factory=list)
    """Messages before the text's turn, verbatim."""
    response_format_given: dict[str, Any] | None = None
    """Sent as-is instead of the schema built from the fields."""
    # one answer at temperature 0: the labeller's sampling options, fixed
    probabilities: str = "argmax"
    samples: int = 1
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        try:
            check_template(self.template)
        except ValueError as exc:
            raise SmallfitError(str(exc)) from exc
        if "labels" in template_slots(self.template):
            raise SmallfitError(
                "the prompt template of an extract task has a {labels} slot: its fields go in "
                "{fields}"
            )
        unknown = sorted(set(self.descriptions) - set(self.schema.names))
        if unknown:
            raise SmallfitError(f"descriptions name fields not in the schema: {unknown}")

    @property
    def labels(self) -> list[str]:
        """The field names (what an LLM model's manifest lists)."""
        return list(self.schema.names)

    @property
    def field_block(self) -> str:
        lines = []
        for name in self.schema:
            kind = " (a list)" if name in self.schema.lists else ""
            note = f": {self.descriptions[name]}" if name in self.descriptions else ""
            lines.append(f"- {name}{kind}{note}")
        return "\n".join(lines)

    def user_message(self, text: str) -> str:
        return self.template.format(text=text, fields=self.field_block)

    def render_answer(self, values: Values) -> str:
        return json.dumps(self.schema.render(values), ensure_ascii=False)

    def messages(self, text: str) -> list[dict[str, Any]]:
        """The context, each worked example as a user turn and its answer, then the text."""
        worked = [(self.user_message(e), self.render_answer(v)) for e, v in self.examples]
        return worked_chat(self.context, worked, self.user_message(text))

    def response_format(self, style: str = "json_schema") -> dict[str, Any] | None:
        """The fields' JSON schema in the ``style`` the server takes (see
        :meth:`smallfit.llm.prompt.Prompt.response_format`); None for free text."""
        if self.response_format_given is not None:
            return self.response_format_given
        if self.answer != "json-schema" or style == "text":
            return None
        strict = style != "json_object"  # a grammar of optional fields keeps answers short
        return schema_format(style, "fields", answer_schema(self.schema, strict=strict))

    def interpret(self, replies: list[Reply]) -> tuple[str | None, str, np.ndarray | None]:
        """The values as compact JSON and ``ok``, or None and why (``not-json``,
        ``off-schema``)."""
        try:
            values = read_values(replies[0].content, self.schema)
        except AnswerError as exc:
            return None, exc.status, None
        return json.dumps(values, ensure_ascii=False, separators=(",", ":")), "ok", None

    @property
    def fingerprint(self) -> str:
        """Hash of everything but the text that shapes the answer."""
        return hash_json(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "schema": self.schema.to_dict(),
            "descriptions": self.descriptions,
            "examples": [[text, values] for text, values in self.examples],
            "answer": self.answer,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        } | {
            name: value
            for name, value in (
                ("context", self.context),
                ("response_format_given", self.response_format_given),
            )
            if value
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldPrompt:
        return cls(
            **{
                **data,
                "schema": FieldSchema.from_dict(data["schema"]),
                "examples": [(text, dict(values)) for text, values in data.get("examples", [])],
            }
        )
