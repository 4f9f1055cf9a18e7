"""The layout of a run directory: the one place that spells a run's paths.

    <run>/config.yaml          the config the run was made with
    <run>/data.json            the data summary (sizes, labels, held-out labels, key)
    <run>/stages.json          each stage's key, time and outcome
    <run>/results.json         every candidate's results and the selection
    <run>/cascade.json         the cascade's calibration, test check and curves
    <run>/report.html          the report
    <run>/smallfit.log         libraries' output during the run
    <run>/peak_rates.json      this machine's measured peak rates (roofline)
    <run>/models/<name>/       each candidate (teacher, students, compressed, cascade)
    <run>/labels/              the teacher's labels of the pool, its ledger and answer store
    <run>/results/<name>.json  one candidate's results; <name>.test_probs.npy its test answers
    <run>/results/test.jsonl   the test split the results were measured on
    <run>/route/               the route stage's cached tier outputs
    <run>/compress-cache/      compression steps' outputs by key

Paths only: nothing here reads or writes. pathlib only, so anything may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

TEACHER = "teacher"
"""The teacher's candidate name (and its model directory's)."""
CASCADE = "cascade"
"""The calibrated cascade's candidate name."""
ONE_OFF_STAGES = ("teacher", "student:", "compress")
"""Stage-name prefixes whose work a rerun reuses (the report's time accounting)."""


def stage(kind: str, name: str | None = None) -> str:
    """A stage's name in ``stages.json``: ``teacher``, ``route``, or ``kind:name``
    (``student:minilm-l6``, ``evaluate:linear``, ``compress:minilm-l6-int8``)."""
    return kind if name is None else f"{kind}:{name}"


def work_of(model_dir: Path) -> Path:
    """Where a training stage keeps its checkpoints for ``model_dir``: ``<model_dir>.work``."""
    return model_dir.with_name(model_dir.name + ".work")


def work_key(model_dir: Path) -> Path:
    """The file naming the stage key ``work_of(model_dir)``'s checkpoints were made for."""
    return work_of(model_dir) / "stage-key"


class RunDir:
    """The paths of one run directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- top-level files ------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_file(self) -> Path:
        return self.root / "data.json"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    @property
    def results_file(self) -> Path:
        return self.root / "results.json"

    @property
    def cascade_file(self) -> Path:
        return self.root / "cascade.json"

    @property
    def report_file(self) -> Path:
        return self.root / "report.html"

    @property
    def log_file(self) -> Path:
        return self.root / "smallfit.log"

    @property
    def peaks_file(self) -> Path:
        return self.root / "peak_rates.json"

    # -- models ---------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        """Candidate ``name``'s model directory."""
        return self.models_dir / name

    # -- the teacher's labels -------------------------------------------------------------------

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def labels_summary(self) -> Path:
        return self.labels_dir / "summary.json"

    @property
    def labels_ledger(self) -> Path:
        return self.labels_dir / "ledger.jsonl"

    def label_probs(self, key: str) -> Path:
        """The teacher's probabilities on the pool, cached by the labelling key."""
        return self.labels_dir / f"probs-{key[:16]}.npy"

    @property
    def answers_file(self) -> Path:
        """An API teacher's answers and requests (SQLite)."""
        return self.labels_dir / "llm-answers.sqlite"

    def answers_from(self, model_dir: Path) -> str:
        """:attr:`answers_file` relative to ``model_dir``, so a moved run keeps its store."""
        return os.path.relpath(self.answers_file, model_dir)

    # -- results --------------------------------------------------------------------------------

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def result(self, name: str) -> Path:
        """Candidate ``name``'s results file."""
        return self.results_dir / f"{name}.json"

    def test_probs(self, name: str) -> Path:
        """Candidate ``name``'s probabilities on the test split."""
        return self.results_dir / f"{name}.test_probs.npy"

    def test_answers(self, name: str) -> Path:
        """An extract candidate's answers on the test split (JSONL, one row per text)."""
        return self.results_dir / f"{name}.test_answers.jsonl"

    def label_answers(self, key: str) -> Path:
        """An extract teacher's answers on the pool, cached by the labelling key."""
        return self.labels_dir / f"answers-{key[:16]}.jsonl"

    @property
    def test_split(self) -> Path:
        return self.results_dir / "test.jsonl"

    # -- caches ---------------------------------------------------------------------------------

    @property
    def route_dir(self) -> Path:
        return self.root / "route"

    def route_probs(self, model_dir: Path, what: str, key: str) -> Path:
        """A tier's cached probabilities on split ``what`` (dev, test, oos)."""
        return self.route_dir / f"{model_dir.name}.{what}-{key[:16]}.npy"

    def route_signal(self, model_dir: Path, what: str, key: str, signal: str) -> Path:
        """A tier's cached ``signal`` (logits, embeddings) on split ``what``."""
        return self.route_dir / f"{model_dir.name}.{what}-{key[:16]}.{signal}.npy"

    @property
    def compress_cache(self) -> Path:
        return self.root / "compress-cache"
