"""A run directory: its layout (:mod:`smallfit.run.layout`, the one place that spells a run's
paths), its typed records (:mod:`smallfit.run.records`) and :class:`Run`, which reads and writes
them (:mod:`smallfit.run.store`). The records and the store load on first use, so importing the
layout stays light."""

from __future__ import annotations

from smallfit.lazy import lazy_exports
from smallfit.run.layout import (
    CASCADE,
    ONE_OFF_STAGES,
    TEACHER,
    RunDir,
    stage,
    work_key,
    work_of,
)

_LAZY = {
    "Run": "smallfit.run.store",
    "CandidateResult": "smallfit.run.records",
    "CascadeSummary": "smallfit.run.records",
    "DataSummary": "smallfit.run.records",
    "RunResults": "smallfit.run.records",
}

__all__ = [
    "CASCADE",
    "ONE_OFF_STAGES",
    "TEACHER",
    "CandidateResult",
    "CascadeSummary",
    "DataSummary",
    "Run",
    "RunDir",
    "RunResults",
    "stage",
    "work_key",
    "work_of",
]


__getattr__ = lazy_exports(__name__, _LAZY)
