"""The prompt an LLM teacher sees: instruction template, label list, few-shot turns.

A :class:`Prompt` renders chat messages for one text and has a ``fingerprint``: the hash of
everything but the text that shapes the answer (template, labels, descriptions, examples,
answer format, sampling). The answer store is keyed by (model, fingerprint, text).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from smallfit.errors import SmallfitError
from smallfit.hashing import hash_json

DEFAULT_INSTRUCTION = (
    "Classify the text into exactly one of these labels.\n\n{labels}\n\n"
    'Answer with JSON: {{"label": "<one of the labels>"}}.\n\nText: {text}'
)

SLOTS = {"text", "labels", "fields"}


def template_slots(template: str) -> set[str]:
    """The ``{slots}`` of a format template (escaped ``{{braces}}`` are not slots); a
    ValueError for bad braces."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def check_template(template: str) -> None:
    """A clear error when ``template`` lacks ``{text}``, has an unknown slot or bad braces."""
    try:
        fields = template_slots(template)
    except ValueError as exc:
        raise ValueError(
            f"prompt template is malformed ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    if "text" not in fields:
        raise ValueError("prompt template has no {text} slot: the text to classify goes there")
    unknown = sorted({f for f in fields if f not in SLOTS})
    if unknown:
        raise ValueError(
            f"prompt template has unknown slots {unknown}; only {{text}} and {{labels}} (a "
            "classify task) or {{fields}} (an extract task) are filled (write literal braces as "
            "{{ }})"
        )


if TYPE_CHECKING:
    import numpy as np

    from smallfit.llm.client import Reply


class AskPrompt(Protocol):
    """What the labeller asks of a prompt: the messages and response format for a text, how
    many answers and with which sampling, and how the replies become a stored answer."""

    @property
    def answer(self) -> str: ...
    @property
    def probabilities(self) -> str: ...
    @property
    def samples(self) -> int: ...
    @property
    def top_logprobs(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def messages(self, text: str) -> list[dict[str, Any]]: ...

    def response_format(self, style: str = "json_schema") -> dict[str, Any] | None: ...

    def interpret(self, replies: list[Reply]) -> tuple[str | None, str, np.ndarray | None]:
        """The answer (None: none could be read), its status and its probabilities."""
        ...


def worked_chat(
    context: Sequence[dict[str, Any]], examples: Sequence[tuple[str, str]], question: str
) -> list[dict[str, Any]]:
    """The chat: the ``context`` messages verbatim, each worked example as a user turn and its
    answer, then the ``question``."""
    out: list[dict[str, Any]] = [dict(m) for m in context]
    for asked, answered in examples:
        out.append({"role": "user", "content": asked})
        out.append({"role": "assistant", "content": answered})
    out.append({"role": "user", "content": question})
    return out


def schema_format(style: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as a response format in ``style``: ``json_object`` with a ``schema``
    (llama-cpp-python), else OpenAI's strict ``json_schema``."""
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def check_labels(labels: Sequence[str]) -> None:
    """An LLM classifier needs at least two distinct, non-empty labels."""
    if len(set(labels)) < 2:
        raise SmallfitError(
            f"an LLM classifier needs at least two labels, got {sorted(set(labels))}"
        )
    if any(not str(label).strip() for label in labels):
        raise SmallfitError("labels may not be empty strings")


@dataclass(frozen=True)
class Prompt:
    """Everything that turns a text into the chat messages an LLM answers."""

    template: str
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)
    answer: str = "json-schema"
    probabilities: str = "logprobs"
    samples: int = 1
    top_logprobs: int = 5
    max_tokens: int = 48
    seed: int = 0
    context: list[dict[str, Any]] = field(default_factory=list)
    """Messages before the text's turn, verbatim (a captured template's system prompt)."""
    answer_key: str | None = None
    """The answer is a JSON object with the label under this key (a captured task's form)."""
    response_format_given: dict[str, Any] | None = None
    """Sent as-is instead of the label schema (the format the application asked for)."""

    def __post_init__(self) -> None:
        try:
            check_template(self.template)
        except ValueError as exc:
            raise SmallfitError(str(exc)) from exc
        check_labels(self.labels)
        if "fields" in template_slots(self.template):
            raise SmallfitError(
                "the prompt template of a classify task has a {fields} slot: its labels go in "
                "{labels}"
            )
        unknown = sorted(set(self.descriptions) - set(self.labels))
        if unknown:
            raise SmallfitError(f"label_descriptions name labels not in the data: {unknown}")

    @property
    def label_block(self) -> str:
        return "\n".join(
            f"- {label}: {self.descriptions[label]}" if label in self.descriptions else f"- {label}"
            for label in self.labels
        )

    def user_message(self, text: str) -> str:
        return self.template.format(text=text, labels=self.label_block)

    def messages(self, text: str) -> list[dict[str, Any]]:
        """The chat: the context, each few-shot example as a user turn and its answer, then
        the text."""
        worked = [(self.user_message(e), self.render_answer(y)) for e, y in self.examples]
        return worked_chat(self.context, worked, self.user_message(text))

    def render_answer(self, label: str) -> str:
        if self.answer_key is not None:
            return json.dumps({self.answer_key: label}, ensure_ascii=False)
        return f'{{"label": "{label}"}}' if self.answer == "json-schema" else label

    def parse(self, content: str | None) -> str | None:
        """The label an answer names (None: none, or ambiguous)."""
        from smallfit.llm.answers import parse_label

        return parse_label(content, self.labels, key=self.answer_key or "label")

    def interpret(self, replies: list[Reply]) -> tuple[str | None, str, np.ndarray | None]:
        """The label the replies name, its status (``ok``; ``ok-no-logprobs`` when the server
        gave none; ``unparseable``) and the probabilities over the labels, as
        ``probabilities`` says."""
        from smallfit.llm.answers import logprob_distribution, one_hot_row, vote_share

        labels = self.labels
        parsed = [self.parse(r.content) for r in replies]
        label = parsed[0]
        if self.probabilities == "samples":
            probs = vote_share(parsed, labels)
            label = labels[int(probs.argmax())] if probs is not None else None
            return label, "ok" if label else "unparseable", probs
        if label is None:
            return None, "unparseable", None
        if self.probabilities == "logprobs":
            reply = replies[0]
            probs = logprob_distribution(reply.content or "", reply.tokens or [], label, labels)
            if probs is None:
                return label, "ok-no-logprobs", one_hot_row(label, labels)
            return label, "ok", probs
        return label, "ok", one_hot_row(label, labels)

    def response_format(self, style: str = "json_schema") -> dict[str, Any] | None:
        """The JSON schema that constrains the answer to the label set, in the ``style`` the
        server takes: ``json_schema`` (OpenAI, vLLM) or ``json_object`` with a ``schema``
        (llama-cpp-python); None for free text. A given format is sent as it is."""
        if self.response_format_given is not None:
            return self.response_format_given
        if self.answer != "json-schema" or style == "text":
            return None
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(self.labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }
        return schema_format(style, "classification", schema)

    @property
    def fingerprint(self) -> str:
        """Hash of everything but the text that shapes the answer."""
        return hash_json(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "labels": self.labels,
            "descriptions": self.descriptions,
            "examples": [list(e) for e in self.examples],
            "answer": self.answer,
            "probabilities": self.probabilities,
            "samples": self.samples,
            "top_logprobs": self.top_logprobs,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        } | {  # only when set: a prompt without them keeps the fingerprint it always had
            name: value
            for name, value in (
                ("context", self.context),
                ("answer_key", self.answer_key),
                ("response_format_given", self.response_format_given),
            )
            if value
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prompt:
        return cls(**{**data, "examples": [tuple(e) for e in data.get("examples", [])]})


def draw_examples(
    texts: Sequence[str], labels: Sequence[str], k: int, *, seed: int
) -> list[tuple[str, str]]:
    """``k`` (text, label) pairs from the training data, seeded: one per label first (labels in a
    shuffled order), then more at random."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    chosen: list[int] = []
    seen: set[str] = set()
    for i in order:
        if labels[i] not in seen:
            seen.add(labels[i])
            chosen.append(i)
        if len(chosen) == k:
            break
    rest = [i for i in order if i not in set(chosen)]
    chosen += rest[: k - len(chosen)]
    return [(texts[i], labels[i]) for i in chosen]
