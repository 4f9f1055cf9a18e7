"""From an LLM's reply to a label and probabilities.

Parsing never guesses: a reply that names no label, or several, is *unparseable* and counted as
such. Probabilities come from one of three stated methods:

- ``logprobs``: walk the chosen label's tokens. At each, the alternatives the server lists
  (``top_logprobs``) that continue the label text so far towards another label are branches;
  the chosen token and those branches are renormalised among themselves, as a grammar that
  only allows label names would. A branch's probability (the path so far times its share)
  goes to the labels it leads to, split equally; the chosen label gets the path's product.
  Labels no listed branch reaches get nothing (their tokens were not in the top list).
- ``samples``: the share of votes over several answers sampled at temperature 1.
- ``argmax``: one-hot on the single answer (no confidence information).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_label(content: str | None, labels: Sequence[str], *, key: str = "label") -> str | None:
    """The label named by ``content`` (a JSON ``{key: ...}`` object or plain text), or None
    when it names none or is ambiguous."""
    if content is None:
        return None
    text = content.strip()
    for candidate in (text, *(m.group(0) for m in _JSON_OBJECT.finditer(text))):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get(key), str):
            return _match(obj[key], labels)
    return _match(text, labels)


def _match(answer: str, labels: Sequence[str]) -> str | None:
    cleaned = answer.strip().strip("\"'`.,;:!").strip()
    exact = [label for label in labels if label == cleaned]
    if exact:
        return exact[0]
    folded = [label for label in labels if label.casefold() == cleaned.casefold()]
    if len(folded) == 1:
        return folded[0]
    # a label mentioned as a whole word, and no other label outside it
    found = [
        label
        for label in labels
        if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", answer, re.IGNORECASE)
    ]
    found = [f for f in found if not any(f != g and f.casefold() in g.casefold() for g in found)]
    return found[0] if len(found) == 1 else None


def one_hot_row(label: str, labels: Sequence[str]) -> np.ndarray:
    row = np.zeros(len(labels), dtype=np.float64)
    row[list(labels).index(label)] = 1.0
    return row


def vote_share(answers: Sequence[str | None], labels: Sequence[str]) -> np.ndarray | None:
    """The share of parseable answers naming each label; None when none parsed."""
    votes = [a for a in answers if a is not None]
    if not votes:
        return None
    row = np.zeros(len(labels), dtype=np.float64)
    for vote in votes:
        row[list(labels).index(vote)] += 1.0
    return row / len(votes)


def logprob_distribution(
    content: str, tokens: Sequence[dict[str, Any]], label: str, labels: Sequence[str]
) -> np.ndarray | None:
    """Probabilities over ``labels`` from the reply's token logprobs (see the module docstring),
    or None when the tokens do not spell ``content`` or the label cannot be located in it."""
    if not tokens or "".join(t.get("token", "") for t in tokens) != content:
        return None
    key = content.find('"label"')
    start = content.find(label, key + len('"label"') if key >= 0 else 0)
    if start < 0:
        return None
    end = start + len(label)
    quoted = key >= 0  # the label ends at a closing quote, not at the end of the reply
    index = {name: i for i, name in enumerate(labels)}
    mass = np.zeros(len(labels), dtype=np.float64)
    path = 0.0  # log-probability of the chosen label's tokens so far, renormalised
    position = 0
    for token in tokens:
        text = token.get("token", "")
        begin, position = position, position + len(text)
        if position <= start or begin >= end:
            continue
        head = content[begin:start] if begin < start else ""
        so_far = content[start:begin] if begin > start else ""
        chosen = float(token.get("logprob", 0.0))
        branches: list[tuple[float, list[str]]] = []
        for alt in token.get("top_logprobs") or []:
            alt_text = alt.get("token", "")
            if alt_text == text or not alt_text.startswith(head):
                continue
            written = so_far + alt_text[len(head) :]
            if quoted and '"' in written:
                whole = written[: written.index('"')]
                matches = [whole] if whole in index else []
            else:
                matches = [n for n in labels if n.startswith(written)] if written else []
            matches = [m for m in matches if m != label]
            if matches:
                branches.append((float(alt["logprob"]), matches))
        # as a grammar would: only tokens that continue some label count at this position
        norm = math.log(math.exp(chosen) + sum(math.exp(lp) for lp, _ in branches))
        for logprob, matches in branches:
            share = math.exp(path + logprob - norm) / len(matches)
            for match in matches:
                mass[index[match]] += share
        path += chosen - norm
    mass[index[label]] += math.exp(path)
    total = mass.sum()
    if total < 1.0:
        empty = mass == 0
        if empty.any():
            mass[empty] += (1.0 - total) / empty.sum()
    return mass / mass.sum()
