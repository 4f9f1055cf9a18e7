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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallfit.config import FitConfig, dump_fit_config
from smallfit.data import Dataset
from smallfit.distill.config import StudentBase
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_json, hash_texts
from smallfit.logs import routed
from smallfit.models.base import read_manifest, write_json
from smallfit.models.gguf_extractor import KIND as GGUF_KIND
from smallfit.run.layout import CASCADE, TEACHER, RunDir, stage, work_key, work_of
from smallfit.run.records import (
    CandidateResult,
    RunResults,
    SelectionRecord,
)
from smallfit.run.store import Run
from smallfit.tasks import Labels, Task, task_of
from smallfit.teach.config import TeacherBase
from smallfit.train.distributed import (
    is_main,
    share_from_main,
    wait_for_everyone,
    world_size,
)
from smallfit.zoo import local_base

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

    def model(self, name: str) -> Any:
        """Candidate ``name`` of this run, loaded (``result.model("linear")``): a classifier,
        or a field extractor."""
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


@dataclass
class _Run:
    """One fit in progress: its config, data, stage records, and the keys stages chain on."""

    config: FitConfig
    dataset: Dataset
    stages: _Stages
    progress: bool
    log: Callable[[str], None]
    data_key: str
    task: Task
    keys: dict[str, str] = field(default_factory=dict)  # candidate name -> model key
    teacher_test: Any = None  # the teacher's answers on test, which the others are scored on

    @property
    def dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.config.run_dir)

    @property
    def store(self) -> Run:
        return Run(self.config.run_dir)

    def teacher(self) -> Any:
        """Build (or reuse) the teacher; None when the gold labels stand in for it."""
        if not self.config.teacher.builds_model:
            return None
        out = self.run.model(TEACHER)
        teacher = self.config.teacher.identity(self.config.task)
        key = hash_json({"teacher": teacher, "data": self.data_key})
        self.keys[TEACHER] = key
        fresh = self.stages.fresh(TEACHER, key, out)
        wait_for_everyone()  # every process has looked before the first one writes
        if fresh:
            model = self.task.load_model(out)
        elif self.config.teacher.distributed(self.config.task) or world_size() == 1:
            model = self._build(TEACHER, self.config.teacher, key, out, self._teacher_build)
        else:  # the first process builds it, the others load what it saved
            if is_main():
                model = self._build(
                    TEACHER, self.config.teacher, key, out, self._teacher_build, alone=True
                )
            wait_for_everyone()
            if not is_main():
                model = self.task.load_model(out)
        model.use_engine(self.config.engine)  # where its bulk labelling runs
        return model

    def _teacher_build(self, out: Path) -> Any:
        return self.task.build_teacher(self.config, self.dataset, out, self.progress)

    def _build(
        self,
        name: str,
        config: TeacherBase | StudentBase,
        key: str,
        out: Path,
        build: Callable[[Path], Any],
        *,
        alone: bool = False,
    ) -> Any:
        """Build a stage's model into ``out`` and record the stage. Under a distributed launch,
        the first process clears and records, and every process trains together (``alone``:
        the first process only, the others not waiting here)."""
        started = time.monotonic()
        if is_main():
            self._log_schedule(name, config)
            shutil.rmtree(out, ignore_errors=True)
            self.stages.claim_work_dir(out, key)
        if not alone:
            wait_for_everyone()
        model = build(out)
        if is_main():
            self.stages.finish(name, key, started)
        if not alone:
            wait_for_everyone()
        if is_main():  # done: its checkpoints (or only the key claiming them) can go
            shutil.rmtree(work_of(out), ignore_errors=True)
        return model

    def _log_schedule(self, name: str, config: TeacherBase | StudentBase) -> None:
        """Say how long a trained model's training is planned to be, and why."""
        schedule = config.schedule(len(self.dataset.train))
        if schedule is not None:
            self.log(f"[{name}] {schedule.describe()}")

    def labels(self, teacher: Any) -> Labels:
        """The teacher's (or gold's) answers on the training pool and dev, and their key."""
        return self.task.label(self, teacher)

    def students(self, labels: Labels) -> None:
        """Distil (or reuse) every student. Under a distributed launch, every process trains
        the students whose training spreads (Trainer's), the first one alone the others."""
        for student in self.config.students:
            out = self.run.model(student.name)
            key = hash_json(
                {
                    "student": student.model_dump(mode="json"),
                    "labels": labels.key,
                    **local_base(getattr(student, "base", None)),
                }
            )
            self.keys[student.name] = key
            name = stage("student", student.name)
            fresh = self.stages.fresh(name, key, out)
            wait_for_everyone()  # every process has looked before the first one writes
            if fresh or not (student.distributed or is_main()):
                continue

            def train(out: Path, student: StudentBase = student) -> None:
                self.task.distill(student, self.dataset, labels, out, self.progress)

            self._build(name, student, key, out, train, alone=not student.distributed)

    def evaluate(self, name: str) -> CandidateResult:
        """Measure (or reuse) one candidate; the teacher must come first, so the others can be
        compared with its test answers."""
        test_key = self.task.test_key(self.dataset)
        key = hash_json(
            {
                "eval": self.config.evaluate.model_dump(mode="json"),
                "model": self.keys[name],
                "test": test_key,
                "teacher": self.keys.get(TEACHER) if name != TEACHER else None,
            }
        )
        files = self.task.answer_files(self.store, name)
        if self.stages.fresh(stage("evaluate", name), key, *files):
            result = self.store.read_candidate(name)
            answers = self.task.read_answers(self.store, name)
        else:
            started = time.monotonic()
            result, answers = self.task.evaluate(self, name, self.teacher_test)
            self.task.save_answers(self.store, result, answers)
            self.stages.finish(stage("evaluate", name), key, started)
        if name == TEACHER:
            self.teacher_test = answers
        return result

    def compress(self, labels: Labels) -> tuple[list[CandidateResult], list[dict[str, Any]]]:
        """Build and measure the compressed candidates, in order, until the budget is spent.
        Returns (measured results, candidates not built with the reason)."""
        from smallfit.compress import compress
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
        heal = self.task.heal(data, labels)
        # Steps check themselves on dev texts, then training texts when dev is small; never test.
        check_texts = [*data.dev.texts, *data.train.texts][: config.check_texts]
        budget = parse_duration(config.budget) if config.budget else float("inf")
        started = time.monotonic()
        measured, missed = [], []
        for source in sources:
            kind = read_manifest(self.run.model(source))["kind"]
            for candidate in config.expand("gguf" if kind == GGUF_KIND else "graph"):
                name = f"{source}-{candidate.name}"
                steps_text = [s.method for s in candidate.steps]
                key = step_key(self.keys[source], list(candidate.steps), labels.key)
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
        teacher_dev: Any,
        *,
        metric: str,
    ) -> Routed | None:
        """Calibrate (or reuse) the cascade: its result and summary; None without one."""
        from smallfit.route.stage import Routed, tier_names

        config = self.config.route
        if config is None:
            return None
        try:
            names = tier_names(config, candidates, chosen, metric=metric)
        except SmallfitError as exc:
            self.log(f"[route] no cascade: {exc}")
            return None
        extra = self.task.cascade_inputs(config, candidates, names)
        key = hash_json(
            {
                "route": config.model_dump(mode="json"),
                "tiers": [self.keys.get(n, n) for n in names],
                # other candidates the cascade may use (none: the key stays as it was)
                **({"front": [self.keys.get(n, n) for n in extra]} if extra else {}),
                "eval": self.config.evaluate.model_dump(mode="json"),
                "data": self.data_key,
                "out_of_scope": hash_texts(self.dataset.out_of_scope),
            }
        )
        outputs = (*self.task.answer_files(self.store, CASCADE), self.run.cascade_file)
        if self.stages.fresh("route", key, *outputs):
            summary = self.store.read_cascade()
            assert summary is not None  # one of the outputs checked
            return Routed(self.store.read_candidate(CASCADE), summary)
        started = time.monotonic()
        try:
            routed = self.task.build_cascade(self, config, candidates, chosen, teacher_dev, metric)
        except SmallfitError as exc:  # the run's measurements stand without a cascade
            self.log(f"[route] no cascade: {exc}")
            return None
        self.stages.finish("route", key, started)
        return routed


def _through_students(
    config: FitConfig, *, progress: bool, log: Callable[[str], None]
) -> tuple[Run, _Run, Any, Labels]:
    """The chain up to the trained students: data, teacher, labels, students. Under a
    distributed launch the first process writes the records and the data's summary, the others
    log nothing, and the labels are the first process's (sent to the others)."""
    if not is_main():
        log = _silent
    store = Run(config.run_dir)
    task = task_of(config)
    dataset = task.load_data(config)
    data_key = task.data_key(dataset)
    if is_main():
        store.start(dump_fit_config(config))
        log(task.write_data(store, dataset, data_key, config))
    wait_for_everyone()
    run = _Run(config, dataset, _Stages(store.root, log), progress, log, data_key, task)
    teacher = run.teacher()
    # the first process labels (and may leave out texts the teacher gave no answer for); the
    # others take its labels and its dataset
    labels = run.labels(teacher) if is_main() else None
    labels, run.dataset = share_from_main((labels, run.dataset))
    if labels is None:  # the first process always has them
        raise SmallfitError("no labels came from the first process")
    run.students(labels)
    return store, run, teacher, labels


def _silent(message: str) -> None:
    """The log of a process that is not the first of a distributed launch."""


@routed(lambda config, **_: RunDir(config.run_dir).log_file)  # library output: the run's log
def distill(
    config: FitConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> list[str]:
    """The chain up to the trained students and no further, on one process or on every
    process of an ``accelerate launch`` (the students Trainer trains spread over them); a
    ``fit`` of the same config then reuses all of it. The stages this call ran."""
    _, run, teacher, _ = _through_students(config, progress=progress, log=log)
    if teacher is not None:
        teacher.close()
    return run.stages.ran


@routed(lambda config, **_: RunDir(config.run_dir).log_file)  # library output: the run's log
def fit(
    config: FitConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> FitResult:
    """Run the whole chain into ``config.run_dir``; returns what was measured and chosen."""
    from smallfit.evaluate.host import environment
    from smallfit.route.stage import clears, recommend
    from smallfit.select import format_table, select, selection_json

    if world_size() > 1:
        raise SmallfitError(
            "fit runs on one process: under accelerate launch (or torchrun), run `smallfit "
            "distill`, which trains the students on every process, then `smallfit fit` alone"
        )
    started = time.monotonic()
    store, run, teacher, labels = _through_students(config, progress=progress, log=log)
    if teacher is not None:
        teacher.close()  # an API teacher's connections
    del teacher  # free its memory before the measurements
    candidates = [run.evaluate(name) for name in list(run.keys)]  # the teacher first
    compressed, not_built = run.compress(labels)
    candidates += compressed

    selection = select(candidates, config.select, teacher_name=TEACHER)
    cascade = run.route(candidates, selection.chosen, labels.dev, metric=selection.metric)
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
