"""The data stage's config: where the data is and how to read it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from smallfit.schema import Strict


class DataConfig(Strict):
    """Where the data is and how to read it."""

    train: Path
    """Training file (JSONL, CSV or Parquet): the pool the teacher labels."""
    test: Path | None = None
    """Test file; without one, `test_fraction` of train is held out."""
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    """File format; `auto` picks by suffix (.jsonl/.json, .csv, .parquet/.pq)."""
    text_field: str = "text"
    """Field (column) holding the text."""
    label_field: str = "label"
    """Field (column) holding the gold label. Gold is optional when the teacher labels the pool
    (an `llm` or `model` teacher): a row without it (missing, null or empty) is labelled by the
    teacher and scored against the teacher only."""
    fields_field: str = "fields"
    """An extract task's field (column) holding a row's fields: an object of field -> value,
    or a list of values."""
    spans_field: str = "spans"
    """An extract task's field holding a row's character spans (`start`, `end`, `field`),
    optional; checked against the text and the values where given."""
    fields: list[str] | None = None
    """An extract task's declared fields; null: those the gold rows use. A data row with a
    field not declared here is an error naming it."""
    labels: list[str] | None = None
    """The label set, for a pool with no (or not every) gold label: what an `llm` teacher
    chooses from. Null: the gold labels of train (a `model` teacher's own labels when it has
    them)."""
    dev_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of train carved out as the dev split (stratified, seeded)."""
    max_train: int | None = Field(None, gt=0, description="use a stratified slice of train")
    max_test: int | None = Field(None, gt=0, description="use a stratified slice of test")
    out_of_scope: str | None = None
    """The label of out-of-scope examples (e.g. `oos`): never a class; such rows are left out of
    training, and those in test measure how many the cascade's abstention catches."""
    hold_out_labels: int | list[str] | None = None
    """Labels to treat as unknown, for an out-of-scope evaluation that needs no special data:
    a number (that many labels, drawn with `seed`) or the label names. Their rows leave train
    and dev (no model, the teacher included, sees them) and their test rows join the
    out-of-scope test texts; at least 2 labels must remain. The labels drawn are recorded in
    the run's `data.json` and `cascade.json`."""
    test_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="held out of train when there is no test file"
    )
    seed: int = 0
    """Seed of every split and slice."""
    extra_train: list[Path] = []
    """Files whose texts join the training pool after the splits are carved (never dev or
    test), for the teacher to label: e.g. `smallfit serve --escalation-log`, the queries the
    student was unsure of, with the upstream's answers already in an LLM teacher's cache. Their
    labels are ignored; a text also in dev or test is left out. Needs an `llm` or `model`
    teacher."""
    leakage: Literal["warn", "error"] = "warn"
    """Test texts that are also in train or dev (after normalising case, punctuation and
    spaces): `warn` counts them in the log, `error` stops the run naming the first (the
    default of configs built from captured traffic, whose duplicates are merged first)."""

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(set(value)) < 2:
            raise ValueError("labels needs at least 2 distinct labels")
        blank = [v for v in value if not v.strip()]
        if blank:
            raise ValueError("labels holds an empty label")
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"labels repeats {repeated}")
        return value

    @field_validator("hold_out_labels")
    @classmethod
    def _check_hold_out(cls, value: int | list[str] | None) -> int | list[str] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("hold_out_labels must be at least 1 (or null for none)")
        if isinstance(value, list):
            if not value:
                raise ValueError("hold_out_labels is an empty list; use null to hold none out")
            repeated = sorted({v for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"hold_out_labels repeats {repeated}")
        return value
