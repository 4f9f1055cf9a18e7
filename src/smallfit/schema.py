"""The ground floor of every config: the strict base model (``extra="forbid"``, frozen,
attribute docstrings as field docs) and the duration syntax that budgets share."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(text: str) -> float:
    """``'1h30m'`` -> 5400.0 seconds; ``'45s'``, ``'20m'`` likewise."""
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise ValueError(f"durations look like '20m', '1h30m' or '45s', got {text!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)
