"""A run directory: its layout (:mod:`smallfit.run.layout`), the one place that spells a run's
paths."""

from smallfit.run.layout import (
    CASCADE,
    ONE_OFF_STAGES,
    TEACHER,
    RunDir,
    stage,
    work_key,
    work_of,
)

__all__ = ["CASCADE", "ONE_OFF_STAGES", "TEACHER", "RunDir", "stage", "work_key", "work_of"]
