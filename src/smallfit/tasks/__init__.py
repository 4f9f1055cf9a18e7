"""Task types: what a fit does differently for ``classify`` and ``extract``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smallfit.tasks.base import Labels, Task

if TYPE_CHECKING:
    from smallfit.config import FitConfig

__all__ = ["Labels", "Task", "task_of"]


def task_of(config: FitConfig) -> Task:
    """The task of ``config`` (``config.task``)."""
    if config.task == "extract":
        from smallfit.tasks.extract import ExtractTask

        return ExtractTask()
    from smallfit.tasks.classify import ClassifyTask

    return ClassifyTask()
