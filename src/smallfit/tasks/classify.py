"""The ``classify`` task: text -> one label of a set. Labels are probability rows (the
teacher's, or one-hot gold), students distil them, answers on test are probability rows."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smallfit.data import Dataset, Split
from smallfit.hashing import hash_json, hash_texts
from smallfit.run.layout import TEACHER
from smallfit.run.records import CandidateResult, DataSummary, LabelsSummary
from smallfit.tasks.base import Labels, Task, data_line

if TYPE_CHECKING:
    from smallfit.config import FitConfig
    from smallfit.run.store import Run


def _subset(split: Split, keep: np.ndarray) -> Split:
    """The rows of ``split`` where ``keep`` is true."""
    rows = np.flatnonzero(keep)
    return replace(
        split,
        texts=[split.texts[i] for i in rows],
        labels=[split.labels[i] for i in rows],
        lines=[split.lines[i] for i in rows] if split.lines else [],
    )


class ClassifyTask(Task):
    name = "classify"

    def load_data(self, config: FitConfig) -> Dataset:
        from smallfit.teach import fit_dataset

        return fit_dataset(config)

    def data_key(self, dataset: Dataset) -> str:
        parts = (("train", dataset.train), ("dev", dataset.dev), ("test", dataset.test))
        return hash_json(
            {name: [hash_texts(part.texts), hash_texts(part.labels)] for name, part in parts}
        )

    def write_data(self, store: Run, dataset: Dataset, key: str, config: FitConfig) -> str:
        store.write_data(
            DataSummary(
                train=len(dataset.train),
                dev=len(dataset.dev),
                test=len(dataset.test),
                labels=dataset.labels,
                held_out_labels=dataset.held_out,
                out_of_scope=len(dataset.out_of_scope),
                key=key,
                config=config.data.model_dump(mode="json"),
            )
        )
        store.write_test_split(dataset.test.texts, dataset.test.labels)
        return data_line(dataset, f"{len(dataset.labels)} labels")

    def build_teacher(
        self, config: FitConfig, dataset: Dataset, out_dir: Path, progress: bool
    ) -> Any:
        from smallfit.teach import build_teacher

        return build_teacher(config.teacher, dataset, out_dir=out_dir, progress=progress)

    def label(self, run: Any, teacher: Any) -> Labels:
        """The teacher's probabilities for the training pool and dev (one-hot gold without a
        teacher); texts it gave no answer for leave the pool."""
        from smallfit.evaluate.audit import audit_teacher
        from smallfit.teach import label_pool, one_hot

        data = run.dataset
        if teacher is None:
            return Labels(
                one_hot(data.train.labels, data.labels),
                one_hot(data.dev.labels, data.labels),
                hash_json({"gold": run.data_key}),
            )
        started = time.monotonic()
        train, dev = (
            label_pool(
                teacher,
                split.texts,
                labels=data.labels,
                teacher_dir=run.run.model(TEACHER),
                run=run.run,
                progress=run.progress,
            )
            for split in (data.train, data.dev)
        )
        train_ok, dev_ok = (~np.isnan(probs).any(axis=1) for probs in (train, dev))
        unanswered = {"train": int((~train_ok).sum()), "dev": int((~dev_ok).sum())}
        if unanswered["train"] or unanswered["dev"]:
            run.log(
                f"[labels] the teacher gave no answer for {unanswered['train']} training and "
                f"{unanswered['dev']} dev texts (unparseable, or failed after retries): left out "
                "of training"
            )
            data = run.dataset = replace(
                data, train=_subset(data.train, train_ok), dev=_subset(data.dev, dev_ok)
            )
            train, dev = train[train_ok], dev[dev_ok]
        audit, line = audit_teacher(data, train, dev)
        run.log(f"[labels] {line}")
        run.store.write_labels_summary(
            LabelsSummary(
                **audit,
                train=len(train),
                dev=len(dev),
                unanswered=unanswered,
                seconds=round(time.monotonic() - started, 1),
            )
        )
        return Labels(train, dev, hash_json({"teacher": run.keys[TEACHER], "data": run.data_key}))

    def distill(
        self, student: Any, dataset: Dataset, labels: Labels, out_dir: Path, progress: bool
    ) -> None:
        from smallfit.distill import distill_student

        distill_student(
            student,
            dataset,
            train_probs=labels.train,
            dev_probs=labels.dev,
            out_dir=out_dir,
            progress=progress,
        )

    def test_key(self, dataset: Dataset) -> str:
        return hash_json([hash_texts(dataset.test.texts), hash_texts(dataset.test.labels)])

    def evaluate(self, run: Any, name: str, teacher_answers: Any) -> tuple[CandidateResult, Any]:
        from smallfit.evaluate import evaluate_candidate

        measured = evaluate_candidate(
            run.run.model(name),
            test=run.dataset.test,
            teacher_test_probs=teacher_answers,
            is_teacher=name == TEACHER,
            config=run.config.evaluate,
            progress=run.progress,
            peaks_file=run.run.peaks_file,
        )
        return measured.result, measured.test_probs

    def answer_files(self, store: Run, name: str) -> tuple[Path, ...]:
        return store.candidate_files(name)

    def save_answers(self, store: Run, result: CandidateResult, answers: Any) -> None:
        store.save_candidate(result, answers)

    def read_answers(self, store: Run, name: str) -> Any:
        return store.read_test_probs(name)

    def build_cascade(
        self,
        run: Any,
        config: Any,
        candidates: list[CandidateResult],
        chosen: str | None,
        teacher_dev: Any,
        metric: str,
    ) -> Any:
        from smallfit.route.stage import build_cascade

        return build_cascade(
            run.dir,
            config,
            dataset=run.dataset,
            candidates=candidates,
            chosen=chosen,
            evaluate=run.config.evaluate,
            teacher_dev_probs=teacher_dev,
            metric=metric,
            progress=run.progress,
            log=run.log,
        )

    def cascade_inputs(
        self, config: Any, candidates: list[CandidateResult], names: list[str]
    ) -> list[str]:
        """The candidates tried in front of the default tiers (``route.front``)."""
        from smallfit.route.front import front_options

        return front_options(config, candidates, names=names)

    def heal(self, dataset: Dataset, labels: Labels) -> Any:
        from smallfit.compress import HealData

        return HealData(
            train_texts=dataset.train.texts,
            train_probs=labels.train,
            dev_texts=dataset.dev.texts,
            dev_probs=labels.dev,
            source=labels.key,
        )
