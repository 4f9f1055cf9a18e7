"""A task type: what ``fit`` does differently for ``classify`` and ``extract``.

The pipeline owns the stages, their keys and their reuse; a task brings its data, its teacher
and labels, its students, its measurements and its saved answers (see DESIGN.md: "a task type
brings its data fields, its metrics, its students and its answer format"). ``task_of`` (in
:mod:`smallfit.tasks`) picks the task of a config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smallfit.config import FitConfig
    from smallfit.run.records import CandidateResult
    from smallfit.run.store import Run


@dataclass
class Labels:
    """What the teacher (or gold) says about the training pool and dev, and the key of that."""

    train: Any
    dev: Any
    key: str
    source: str = "teacher"
    """``teacher``, or ``gold`` where gold labels stand in for it."""


def data_line(dataset: Any, what: str) -> str:
    """The ``[data]`` log line: split sizes, ``what`` (labels or fields) and leaked texts."""
    leaked = dataset.leaked
    return (
        f"[data] {len(dataset.train)} train / {len(dataset.dev)} dev / {len(dataset.test)} "
        f"test, {what}" + (f"; {leaked} test texts are also in train or dev" if leaked else "")
    )


class Task(ABC):
    """The task-specific half of a fit."""

    name: str = ""

    @abstractmethod
    def load_data(self, config: FitConfig) -> Any:
        """The dataset ``config`` describes (train, dev, test)."""

    @abstractmethod
    def data_key(self, dataset: Any) -> str:
        """What identifies the data for stage reuse."""

    @abstractmethod
    def write_data(self, store: Run, dataset: Any, key: str, config: FitConfig) -> str:
        """Write the data summary and the test split; return the log line."""

    @abstractmethod
    def build_teacher(self, config: FitConfig, dataset: Any, out_dir: Path, progress: bool) -> Any:
        """Build and save the teacher."""

    def load_model(self, path: Path) -> Any:
        from smallfit.models.loading import load_model

        return load_model(path)

    @abstractmethod
    def label(self, run: Any, teacher: Any) -> Labels:
        """The teacher's (or gold's) answers on train and dev. ``run`` is the fit in progress:
        its dataset, store, log and keys."""

    @abstractmethod
    def distill(
        self, student: Any, dataset: Any, labels: Labels, out_dir: Path, progress: bool
    ) -> None:
        """Train ``student`` on ``labels`` and save it in ``out_dir``."""

    @abstractmethod
    def test_key(self, dataset: Any) -> str:
        """What identifies the test split (texts and gold) for stage reuse."""

    @abstractmethod
    def evaluate(self, run: Any, name: str, teacher_answers: Any) -> tuple[CandidateResult, Any]:
        """Measure candidate ``name``: its result and its answers on the test split."""

    @abstractmethod
    def answer_files(self, store: Run, name: str) -> tuple[Path, ...]:
        """What a measured candidate leaves (results, then test answers)."""

    @abstractmethod
    def save_answers(self, store: Run, result: CandidateResult, answers: Any) -> None: ...

    @abstractmethod
    def read_answers(self, store: Run, name: str) -> Any: ...

    @abstractmethod
    def build_cascade(
        self,
        run: Any,
        config: Any,
        candidates: list[CandidateResult],
        chosen: str | None,
        teacher_dev: Any,
        metric: str,
    ) -> Any:
        """Calibrate, save and measure the cascade (``config``: the route's); a Routed."""

    def cascade_inputs(
        self, config: Any, candidates: list[CandidateResult], names: list[str]
    ) -> list[str]:
        """Candidates besides the tiers ``names`` that the cascade may use (they join its stage
        key); none here."""
        return []

    def heal(self, dataset: Any, labels: Labels) -> Any:
        """What compression steps that remove weights distil against; None: none."""
        return None
