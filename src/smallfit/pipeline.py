"""``fit``: data -> teacher -> labels -> students -> evaluate -> compress -> select, with
stage reuse.

Each stage has a key: the hash of its config and of its inputs' keys. A stage whose key matches
the one recorded in ``stages.json`` and whose outputs exist is skipped, so a rerun after a crash
or Ctrl-C loses at most the stage in flight. Outputs are written before their key is recorded.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smallfit.config import FitConfig, dump_fit_config
from smallfit.data import Dataset, Split
from smallfit.distill.config import StudentBase
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_json, hash_texts
from smallfit.logs import routed
from smallfit.models.base import BaseClassifier, write_json
from smallfit.run.layout import CASCADE, TEACHER, RunDir, stage, work_key, work_of
from smallfit.run.records import (
    CandidateResult,
    DataSummary,
    LabelsSummary,
    RunResults,
    SelectionRecord,
)
from smallfit.run.store import Run
from smallfit.teach.config import TeacherBase

if TYPE_CHECKING:
    from smallfit.route.stage import Routed


@dataclass(frozen=True)
class FitResult:
    """Where the run lives, what it measured and what it chose."""

    run: Run
    results: RunResults
    table: str
    selection_json: str
    chosen: str | None
    stages_run: list[str]
    stages_skipped: list[str]
    report: Path | None = None
    recommended: str | None = None
    """What to deploy: ``chosen`` when it is a local model; the cascade when the teacher was
    chosen and the cascade keeps a real share of queries off it."""

    @property
    def run_dir(self) -> Path:
        return self.run.root

    def model(self, name: str) -> BaseClassifier:
        """Candidate ``name`` of this run, loaded (``result.model("linear")``)."""
        return self.run.model(name)

    def model_dir(self, name: str) -> Path:
        """Where candidate ``name`` is saved (what ``smallfit serve`` and ``load`` take)."""
        return self.run.model_dir(name)

    def candidate(self, name: str) -> CandidateResult | None:
        """Candidate ``name``'s measured results."""
        return self.results.candidate(name)


class _Stages:
    """Records finished stages in ``run_dir/stages.json``."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]) -> None:
        self.file = RunDir(run_dir).stages_file
        self.done: dict[str, Any] = {}
        if self.file.is_file():
            try:
                self.done = json.loads(self.file.read_text("utf-8"))
            except json.JSONDecodeError:
                self.done = {}
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def fresh(self, name: str, key: str, *outputs: Path, announce: bool = True) -> bool:
        """Whether the stage is done for ``key``; if not, says it is running (``announce``)."""
        entry = self.done.get(name)
        if entry and entry.get("key") == key and all(p.exists() for p in outputs):
            self.skipped.append(name)
            self.log(f"[{name}] up to date, skipped")
            return True
        if announce:
            self.log(f"[{name}] running")
        return False

    @staticmethod
    def claim_work_dir(out: Path, key: str) -> None:
        """Keep ``out``'s checkpoints (``<out>.work``) only if they were made for this key:
        an interrupted stage resumes, but one whose config changed starts afresh."""
        work, marker = work_of(out), work_key(out)
        if work.exists() and (not marker.is_file() or marker.read_text("utf-8") != key):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text(key, encoding="utf-8")

    def finish(self, name: str, key: str, started: float) -> None:
        seconds = round(time.monotonic() - started, 1)
        self.done[name] = {"key": key, "seconds": seconds, "finished": time.time()}
        write_json(self.file, self.done)
        self.ran.append(name)
        self.log(f"[{name}] done in {seconds:.0f}s")


def _subset(split: Split, keep: np.ndarray) -> Split:
    """The rows of ``split`` where ``keep`` is true."""
    rows = np.flatnonzero(keep)
    return replace(
        split,
        texts=[split.texts[i] for i in rows],
        labels=[split.labels[i] for i in rows],
        lines=[split.lines[i] for i in rows] if split.lines else [],
    )


def _data_key(dataset: Dataset) -> str:
    parts = (("train", dataset.train), ("dev", dataset.dev), ("test", dataset.test))
    return hash_json(
        {name: [hash_texts(part.texts), hash_texts(part.labels)] for name, part in parts}
    )


@dataclass
class _Run:
    """One fit in progress: its config, data, stage records, and the keys stages chain on."""

    config: FitConfig
    dataset: Dataset
    stages: _Stages
    progress: bool
    log: Callable[[str], None]
    data_key: str
    keys: dict[str, str] = field(default_factory=dict)  # candidate name -> model key
    teacher_test_probs: np.ndarray | None = None

    @property
    def dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.config.run_dir)

    @property
    def store(self) -> Run:
        return Run(self.config.run_dir)

    def teacher(self) -> BaseClassifier | None:
        """Build (or reuse) the teacher; None when the gold labels stand in for it."""
        from smallfit.models.base import load
        from smallfit.teach import build_teacher

        if not self.config.teacher.builds_model:
            return None
        out = self.run.model(TEACHER)
        key = hash_json({"teacher": self.config.teacher.identity(), "data": self.data_key})
        self.keys[TEACHER] = key
        if self.stages.fresh(TEACHER, key, out):
            return load(out)
        started = time.monotonic()
        self._log_schedule(TEACHER, self.config.teacher)
        shutil.rmtree(out, ignore_errors=True)
        self.stages.claim_work_dir(out, key)
        model = build_teacher(
            self.config.teacher, self.dataset, out_dir=out, progress=self.progress
        )
        self.stages.finish(TEACHER, key, started)
        return model

    def _log_schedule(self, name: str, config: TeacherBase | StudentBase) -> None:
        """Say how long a trained model's training is planned to be, and why."""
        schedule = config.schedule(len(self.dataset.train))
        if schedule is not None:
            self.log(f"[{name}] {schedule.describe()}")

    def labels(self, teacher: BaseClassifier | None) -> tuple[np.ndarray, np.ndarray, str]:
        """The teacher's probabilities for the training pool and dev, and their key."""
        from smallfit.evaluate.audit import audit_teacher
        from smallfit.teach import label_pool, one_hot

        data = self.dataset
        if teacher is None:
            return (
                one_hot(data.train.labels, data.labels),
                one_hot(data.dev.labels, data.labels),
                hash_json({"gold": self.data_key}),
            )
        started = time.monotonic()
        train, dev = (
            label_pool(
                teacher,
                split.texts,
                labels=data.labels,
                teacher_dir=self.run.model(TEACHER),
                run=self.run,
                progress=self.progress,
            )
            for split in (data.train, data.dev)
        )
        train_ok, dev_ok = (~np.isnan(probs).any(axis=1) for probs in (train, dev))
        unanswered = {"train": int((~train_ok).sum()), "dev": int((~dev_ok).sum())}
        if unanswered["train"] or unanswered["dev"]:
            self.log(
                f"[labels] the teacher gave no answer for {unanswered['train']} training and "
                f"{unanswered['dev']} dev texts (unparseable, or failed after retries): left out "
                "of training"
            )
            data = self.dataset = replace(
                data, train=_subset(data.train, train_ok), dev=_subset(data.dev, dev_ok)
            )
            train, dev = train[train_ok], dev[dev_ok]
        audit, line = audit_teacher(data, train, dev)
        self.log(f"[labels] {line}")
        self.store.write_labels_summary(
            LabelsSummary(
                **audit,
                train=len(train),
                dev=len(dev),
                unanswered=unanswered,
                seconds=round(time.monotonic() - started, 1),
            )
        )
        return train, dev, hash_json({"teacher": self.keys[TEACHER], "data": self.data_key})

    def students(self, train_probs: np.ndarray, dev_probs: np.ndarray, labels_key: str) -> None:
        """Distil (or reuse) every student."""
        from smallfit.distill import distill_student

        for student in self.config.students:
            out = self.run.model(student.name)
            key = hash_json({"student": student.model_dump(mode="json"), "labels": labels_key})
            self.keys[student.name] = key
            if self.stages.fresh(stage("student", student.name), key, out):
                continue
            started = time.monotonic()
            self._log_schedule(stage("student", student.name), student)
            shutil.rmtree(out, ignore_errors=True)
            self.stages.claim_work_dir(out, key)
            distill_student(
                student,
                self.dataset,
                train_probs=train_probs,
                dev_probs=dev_probs,
                out_dir=out,
                progress=self.progress,
            )
            self.stages.finish(stage("student", student.name), key, started)

    def evaluate(self, name: str) -> CandidateResult:
        """Measure (or reuse) one candidate; the teacher must come first, so the others can be
        compared with its test answers."""
        from smallfit.evaluate import evaluate_candidate

        test = self.dataset.test
        test_key = hash_json([hash_texts(test.texts), hash_texts(test.labels)])
        key = hash_json(
            {
                "eval": self.config.evaluate.model_dump(mode="json"),
                "model": self.keys[name],
                "test": test_key,
                "teacher": self.keys.get(TEACHER) if name != TEACHER else None,
            }
        )
        if self.stages.fresh(stage("evaluate", name), key, *self.store.candidate_files(name)):
            result = self.store.read_candidate(name)
            test_probs = self.store.read_test_probs(name)
        else:
            started = time.monotonic()
            measured = evaluate_candidate(
                self.run.model(name),
                test=test,
                teacher_test_probs=self.teacher_test_probs,
                is_teacher=name == TEACHER,
                config=self.config.evaluate,
                progress=self.progress,
                peaks_file=self.run.peaks_file,
            )
            result, test_probs = measured.result, measured.test_probs
            self.store.save_candidate(result, test_probs)
            self.stages.finish(stage("evaluate", name), key, started)
        if name == TEACHER:
            self.teacher_test_probs = test_probs
        return result

    def compress(
        self, train_probs: np.ndarray, dev_probs: np.ndarray, labels_key: str
    ) -> tuple[list[CandidateResult], list[dict[str, Any]]]:
        """Build and measure the compressed candidates, in order, until the budget is spent.
        Returns (measured results, candidates not built with the reason)."""
        from smallfit.compress import HealData, compress
        from smallfit.compress.core import step_key
        from smallfit.schema import parse_duration

        config = self.config.compress
        if config is None:
            return [], []
        sources = [
            s.name
            for s in self.config.students
            if s.compressible and (config.students is None or s.name in config.students)
        ]
        data = self.dataset
        heal = HealData(
            train_texts=data.train.texts,
            train_probs=train_probs,
            dev_texts=data.dev.texts,
            dev_probs=dev_probs,
            source=labels_key,
        )
        # Steps check themselves on dev texts, then training texts when dev is small; never test.
        check_texts = [*data.dev.texts, *data.train.texts][: config.check_texts]
        budget = parse_duration(config.budget) if config.budget else float("inf")
        started = time.monotonic()
        measured, missed = [], []
        for source in sources:
            for candidate in config.expand():
                name = f"{source}-{candidate.name}"
                steps_text = [s.method for s in candidate.steps]
                key = step_key(self.keys[source], list(candidate.steps), labels_key)
                out = self.run.model(name)
                fresh = self.stages.fresh(stage("compress", name), key, out, announce=False)
                if not fresh and time.monotonic() - started > budget:
                    self.log(f"[compress:{name}] not built: the budget ({config.budget}) is spent")
                    missed.append({"name": name, "reason": f"budget {config.budget} spent"})
                    continue
                if not fresh:
                    self.log(f"[compress:{name}] running: {' -> '.join(steps_text)}")
                    begun = time.monotonic()
                    try:
                        compress(
                            self.run.model(source),
                            list(candidate.steps),
                            out_dir=out,
                            check_texts=check_texts,
                            heal=heal,
                            name=name,
                            progress=self.progress,
                            cache=(self.run.compress_cache, self.keys[source]),
                        )
                    except SmallfitError as exc:
                        self.log(f"[compress:{name}] failed: {exc}")
                        missed.append({"name": name, "reason": str(exc)})
                        continue
                    self.stages.finish(stage("compress", name), key, begun)
                self.keys[name] = key
                measured.append(self.evaluate(name))
        return measured, missed

    def route(
        self,
        candidates: list[CandidateResult],
        chosen: str | None,
        teacher_dev_probs: np.ndarray,
        *,
        metric: str,
    ) -> Routed | None:
        """Calibrate (or reuse) the cascade: its result and summary; None without one."""
        from smallfit.route.stage import Routed, build_cascade, tier_names

        config = self.config.route
        if config is None:
            return None
        try:
            names = tier_names(config, candidates, chosen, metric=metric)
        except SmallfitError as exc:
            self.log(f"[route] no cascade: {exc}")
            return None
        key = hash_json(
            {
                "route": config.model_dump(mode="json"),
                "tiers": [self.keys.get(n, n) for n in names],
                "eval": self.config.evaluate.model_dump(mode="json"),
                "data": self.data_key,
                "out_of_scope": hash_texts(self.dataset.out_of_scope),
            }
        )
        outputs = (*self.store.candidate_files(CASCADE), self.run.cascade_file)
        if self.stages.fresh("route", key, *outputs):
            summary = self.store.read_cascade()
            assert summary is not None  # one of the outputs checked
            return Routed(self.store.read_candidate(CASCADE), summary)
        started = time.monotonic()
        routed = build_cascade(
            self.dir,
            config,
            dataset=self.dataset,
            candidates=candidates,
            chosen=chosen,
            evaluate=self.config.evaluate,
            teacher_dev_probs=teacher_dev_probs,
            metric=metric,
            progress=self.progress,
            log=self.log,
        )
        self.stages.finish("route", key, started)
        return routed


@routed(lambda config, **_: RunDir(config.run_dir).log_file)  # library output: the run's log
def fit(
    config: FitConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> FitResult:
    """Run the whole chain into ``config.run_dir``; returns what was measured and chosen."""
    from smallfit.evaluate.host import environment
    from smallfit.route.stage import clears, recommend
    from smallfit.select import format_table, select, selection_json
    from smallfit.teach import fit_dataset

    started = time.monotonic()
    store = Run(config.run_dir)
    store.start(dump_fit_config(config))
    dataset = fit_dataset(config)
    data_key = _data_key(dataset)
    log(
        f"[data] {len(dataset.train)} train / {len(dataset.dev)} dev / {len(dataset.test)} test, "
        f"{len(dataset.labels)} labels"
        + (f"; {dataset.leaked} test texts are also in train or dev" if dataset.leaked else "")
    )
    store.write_data(
        DataSummary(
            train=len(dataset.train),
            dev=len(dataset.dev),
            test=len(dataset.test),
            labels=dataset.labels,
            held_out_labels=dataset.held_out,
            out_of_scope=len(dataset.out_of_scope),
            key=data_key,
            config=config.data.model_dump(mode="json"),
        )
    )
    store.write_test_split(dataset.test.texts, dataset.test.labels)
    run = _Run(config, dataset, _Stages(store.root, log), progress, log, data_key)

    teacher = run.teacher()
    labels = run.labels(teacher)
    run.students(*labels)
    if teacher is not None:
        teacher.close()  # an API teacher's connections
    del teacher  # free its memory before the measurements
    candidates = [run.evaluate(name) for name in list(run.keys)]  # the teacher first
    compressed, not_built = run.compress(*labels)
    candidates += compressed

    selection = select(candidates, config.select, teacher_name=TEACHER)
    cascade = run.route(candidates, selection.chosen, labels[1], metric=selection.metric)
    if cascade is not None:
        candidates.append(cascade.result)
    recommended = recommend(
        selection.chosen,
        None if cascade is None else cascade.summary,
        min_local=config.route.recommend_min_local if config.route else 1.0,
        over_floor=cascade is not None and clears(cascade.result, selection),
    )
    line = selection_json(candidates, selection, recommended=recommended)
    fields: dict[str, Any] = {
        "environment": environment(),
        "candidates": candidates,
        "selection": SelectionRecord.model_validate_json(line),
        "not_built": not_built,
        "config": config.model_dump(mode="json"),
        "seconds": round(time.monotonic() - started, 1),
    }
    if cascade is not None:
        fields["cascade"] = cascade.summary
    results = RunResults.model_validate(fields)
    store.write_results(results)
    report = None
    try:  # from the saved results only, like `smallfit report` (never a cached stage)
        from smallfit.report import write_report

        report = write_report(store.root)
        log(f"[report] {report}")
    except SmallfitError as exc:  # the run itself is complete: say so and keep it
        log(f"[report] not written: {exc}")
    return FitResult(
        run=store,
        results=results,
        table=format_table(candidates, selection, metric=selection.metric, recommended=recommended),
        selection_json=line,
        chosen=selection.chosen,
        recommended=recommended["name"],
        stages_run=run.stages.ran,
        stages_skipped=run.stages.skipped,
        report=report,
    )
