"""A captured request's fixed template: the messages before the text (system prompt, worked
turns), the last user message around the varying text, the model and the ``response_format``.
Requests that share all but the text share a template; :func:`find_templates` groups them and
:meth:`Template.cut` finds the text in a new request (None when it does not match)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BOUNDARY_END = (
    "\n",
    ": ",
    ':"',
    ": '",
    ". ",
    "? ",
    "! ",
    "\t",
    '"',
    "'",
    "`",
    "«",
    "“",
    "(",
    "[",
    ">",
)
_BOUNDARY_START = ("\n", '"', "'", "`", "»", "”", ")", "]", "<", "\t")


@dataclass
class Template:
    """What every request of one task shares; the text sits between ``prefix`` and
    ``suffix`` in the last user message."""

    model: str | None
    context: list[dict[str, Any]]
    prefix: str
    suffix: str
    response_format: dict[str, Any] | None
    requests: int = 0

    def key(self) -> str:
        return _key(self.model, self.context, self.response_format)

    def cut(self, request: dict[str, Any]) -> str | None:
        """The text of ``request`` when it follows this template; None otherwise."""
        parts = split_request(request)
        if parts is None:
            return None
        model, context, user, response_format = parts
        if _key(model, context, response_format) != self.key():
            return None
        end = len(user) - len(self.suffix)
        if not (user.startswith(self.prefix) and user.endswith(self.suffix)) or end < len(
            self.prefix
        ):
            return None
        text = user[len(self.prefix) : end]
        return text if text.strip() else None

    def describe(self) -> str:
        system = next((m.get("content") for m in self.context if m.get("role") == "system"), None)
        shown = "" if not isinstance(system, str) else f" system {_short(system)!r};"
        return (
            f"{self.requests} requests to {self.model or '(no model)'}:{shown} user "
            f"{_short(self.prefix)!r} + TEXT + {_short(self.suffix)!r}"
            + ("; response_format set" if self.response_format else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "context": self.context,
            "user_prefix": self.prefix,
            "user_suffix": self.suffix,
            "response_format": self.response_format,
            "requests": self.requests,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        return cls(
            model=data.get("model"),
            context=list(data.get("context") or []),
            prefix=str(data.get("user_prefix") or ""),
            suffix=str(data.get("user_suffix") or ""),
            response_format=data.get("response_format"),
            requests=int(data.get("requests") or 0),
        )


def content_text(content: Any) -> str | None:
    """A message's text: its content string, or its text parts joined (nothing between them,
    as the capture, the task's template and the served route all read it); None without
    text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "".join(texts) if texts else None
    return None


def last_user_text(request: dict[str, Any]) -> str | None:
    """The text of the request's last user message, if any."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return None


def split_request(
    request: dict[str, Any],
) -> tuple[str | None, list[dict[str, Any]], str, dict[str, Any] | None] | None:
    """(model, the messages before the last one, the last message's text, response_format)
    when the last message is a user's text; None otherwise."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = content_text(last.get("content"))
    if content is None:
        return None
    model = request.get("model")
    response_format = request.get("response_format")
    return (
        model if isinstance(model, str) else None,
        [m for m in messages[:-1] if isinstance(m, dict)],
        content,
        response_format if isinstance(response_format, dict) else None,
    )


def find_templates(requests: Sequence[dict[str, Any]]) -> tuple[list[Template], list[int]]:
    """The templates of ``requests``, largest first, and each request's template index (-1:
    not a text request). Within a template the text is what the user messages do not share:
    their longest common prefix and suffix, each cut back to a boundary (a line break, a
    colon, a quote or a bracket) so a word that happens to open every text stays in it."""
    groups: dict[str, list[int]] = {}
    parts = [split_request(r) for r in requests]
    for i, p in enumerate(parts):
        if p is not None:
            groups.setdefault(_key(p[0], p[1], p[3]), []).append(i)
    order = sorted(groups.values(), key=lambda rows: (-len(rows), rows[0]))
    templates, which = [], [-1] * len(requests)
    for number, rows in enumerate(order):
        first = parts[rows[0]]
        assert first is not None
        users = [parts[i][2] for i in rows]  # type: ignore[index]
        prefix, suffix = _common(users)
        templates.append(
            Template(
                model=first[0],
                context=first[1],
                prefix=prefix,
                suffix=suffix,
                response_format=first[3],
                requests=len(rows),
            )
        )
        for i in rows:
            which[i] = number
    return templates, which


def _common(users: list[str]) -> tuple[str, str]:
    distinct = sorted(set(users))
    if len(distinct) < 2:
        return "", ""
    prefix = _prefix(distinct)
    prefix = prefix[: _last_boundary(prefix, _BOUNDARY_END)]
    rest = [u[len(prefix) :] for u in distinct]
    suffix = _prefix([r[::-1] for r in rest])[::-1]
    suffix = suffix[_first_boundary(suffix, _BOUNDARY_START) :]
    return prefix, suffix


def _prefix(items: list[str]) -> str:
    lo, hi = min(items), max(items)  # the common prefix of all is that of the extremes
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


def _last_boundary(prefix: str, marks: tuple[str, ...]) -> int:
    """The length of ``prefix`` up to and including its last boundary mark (0: none)."""
    best = 0
    for mark in marks:
        at = prefix.rfind(mark)
        if at >= 0:
            best = max(best, at + len(mark))
    if best and prefix[best:].strip() == "" and best < len(prefix):
        best = len(prefix)  # trailing spaces after the mark belong to the template
    return best


def _first_boundary(suffix: str, marks: tuple[str, ...]) -> int:
    """Where ``suffix`` may start: at its first boundary mark (len: none)."""
    found = [at for mark in marks if (at := suffix.find(mark)) >= 0]
    return min(found) if found else len(suffix)


def _key(model: str | None, context: list[dict[str, Any]], fmt: dict[str, Any] | None) -> str:
    return json.dumps([model, context, fmt], sort_keys=True, ensure_ascii=False)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
