"""The ``engine:`` section of a fit config (and the ``--engine`` options of ``label``, ``predict``
and ``serve``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from smallfit.schema import Strict


class EngineConfig(Strict):
    """Where labelling, scoring and serving run (`engine: ray` is short for `kind: ray`)."""

    kind: Literal["local", "ray"] = "local"
    """`local`: this process. `ray`: Ray workers, on a cluster at `address` or one started on
    this machine."""
    address: str | None = None
    """A running Ray cluster, e.g. `10.0.0.5:6379` or `auto`; null starts one here."""
    workers: int | None = Field(default=None, ge=1)
    """Ray workers, each with the teacher's `concurrency` requests in flight;
    null for one per machine of the cluster."""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value
