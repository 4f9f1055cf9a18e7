"""How selection picks the winner: the quality floor and the latency ceiling."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from smallfit.schema import Strict

_FLOOR = re.compile(r"^\s*(?P<x>\d+(\.\d+)?)\s*(\*\s*teacher)?\s*$")


class SelectConfig(Strict):
    """How the winner is chosen: smallest candidate over the floor and under the ceiling."""

    metric: (
        Literal[
            "accuracy",
            "macro_f1",
            "teacher_agreement",
            "field_f1",
            "field_macro_f1",
            "doc_exact",
            "field_agreement",
        ]
        | None
    ) = None
    """Quality metric for the floor and the Pareto front. Null: `accuracy` when every test text
    has a gold label, else `teacher_agreement` (the share of test texts where a candidate gives
    the teacher's answer; the teacher's own is 100%, less the texts it left unanswered). An
    extract task: `field_f1` (micro F1 over field values against gold), else `field_agreement`
    (micro F1 against the teacher's answers); `field_macro_f1` and `doc_exact` (every field
    right) are the others."""
    quality_floor: str = "0.98 * teacher"
    """`'0.9'` (absolute) or `'0.98 * teacher'` (relative to the teacher's metric). With
    `teacher.source: gold` (no teacher candidate) it must be absolute: the default is refused
    at load, not guessed."""
    latency_ceiling_ms: float | None = Field(None, gt=0, description="batch-1 p50, 1 thread")
    size: Literal["bytes_on_disk", "parameters"] = "bytes_on_disk"
    """What 'smallest' means."""

    @field_validator("quality_floor")
    @classmethod
    def _check_floor(cls, value: str) -> str:
        parse_floor(value)
        return value


def parse_floor(text: str) -> tuple[float, bool]:
    """``'0.9'`` -> (0.9, False); ``'0.98 * teacher'`` -> (0.98, True)."""
    match = _FLOOR.match(text)
    if not match:
        raise ValueError(f"quality_floor must look like '0.9' or '0.98 * teacher', got {text!r}")
    return float(match["x"]), "teacher" in text
