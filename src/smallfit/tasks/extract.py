"""The ``extract`` task: text -> a JSON object of declared fields.

Labels are the teacher's answers (fields and spans) on the pool, or gold; a tagger student
learns the spans. A teacher's value that is not in its text (an LLM's, later) is counted and
left out of the student's targets, never invented. Answers on test are JSONL rows."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallfit.data.fields import FieldDataset, FieldDoc, load_field_dataset
from smallfit.fields import Span
from smallfit.hashing import hash_json, hash_texts
from smallfit.run.layout import TEACHER
from smallfit.run.records import CandidateResult, DataSummary, LabelsSummary
from smallfit.run.store import read_jsonl, write_jsonl
from smallfit.tasks.base import Labels, Task, data_line
from smallfit.teach.fields import answer_rows, targets

if TYPE_CHECKING:
    from smallfit.config import FitConfig
    from smallfit.run.store import Run


def _docs_key(docs: list[FieldDoc | None]) -> str:
    def one(d: FieldDoc | None) -> Any:
        if d is None:
            return None
        spans = None if d.spans is None else [[s.start, s.end, s.field] for s in d.spans]
        return [d.values, spans]

    return hash_json([one(d) for d in docs])


def _invalid(teacher: Any) -> dict[str, int]:
    """Why an LLM teacher's answers could not be read, by reason (none for other teachers)."""
    return dict(getattr(teacher, "invalid", {}))


def _audit(
    teacher: Any, answers: list[FieldDoc | None], data: FieldDataset, log: Any
) -> tuple[float | None, int]:
    """The teacher against gold on the pool texts that have it, before anything learns from
    it: the share of texts with every field right, and micro F1 (logged). An answer that could
    not be read counts as no fields; the worked examples an LLM was shown are left out."""
    from smallfit.evaluate.fields import field_quality

    shown = {text for text, _ in getattr(getattr(teacher, "prompt", None), "examples", [])}
    texts = [*data.train.texts, *data.dev.texts]
    gold = [*data.train.docs, *data.dev.docs]
    pairs = [
        ({} if a is None else a.values, g.values)
        for t, a, g in zip(texts, answers, gold, strict=True)
        if g is not None and t not in shown
    ]
    if not pairs:
        return None, 0
    exact = sum(a == g for a, g in pairs) / len(pairs)
    f1 = field_quality([a for a, _ in pairs], [g for _, g in pairs], data.schema, resamples=0)
    log(
        f"[labels] the teacher against gold on the {len(pairs)} pool texts with gold"
        + (f" (not the {len(shown)} shown as examples)" if shown else "")
        + f": micro F1 {100 * f1.micro_f1:.2f}%, every field right on {100 * exact:.2f}%"
    )
    return exact, len(pairs)


class ExtractTask(Task):
    name = "extract"

    def load_data(self, config: FitConfig) -> FieldDataset:
        return load_field_dataset(config.data, gold_required=config.teacher.needs_gold)

    def data_key(self, dataset: FieldDataset) -> str:
        parts = (("train", dataset.train), ("dev", dataset.dev), ("test", dataset.test))
        return hash_json(
            {
                "task": "extract",
                "schema": dataset.schema.to_dict(),
                **{n: [hash_texts(p.texts), _docs_key(p.docs)] for n, p in parts},
            }
        )

    def write_data(self, store: Run, dataset: FieldDataset, key: str, config: FitConfig) -> str:
        store.write_data(
            DataSummary(
                train=len(dataset.train),
                dev=len(dataset.dev),
                test=len(dataset.test),
                labels=dataset.labels,
                key=key,
                config=config.data.model_dump(mode="json"),
            )
        )
        store.write_test_fields(dataset.test.texts, dataset.test.docs)
        return data_line(dataset, f"{len(dataset.schema)} fields")

    def build_teacher(
        self, config: FitConfig, dataset: FieldDataset, out_dir: Path, progress: bool
    ) -> Any:
        from smallfit.teach.fields import build_field_teacher

        return build_field_teacher(config.teacher, dataset, out_dir, progress)

    def label(self, run: Any, teacher: Any) -> Labels:
        """The teacher's answers on train and dev (cached in the run by their key), or gold.
        Texts whose answer could not be read (an LLM's, not JSON or off the schema) leave the
        pool; values not in their text are counted and left out of a tagger's targets."""
        data: FieldDataset = run.dataset
        if teacher is None:
            gold = hash_json({"gold": run.data_key})
            return Labels(data.train.docs, data.dev.docs, gold, source="gold")
        key = hash_json({"teacher": run.keys[TEACHER], "data": run.data_key})
        started = time.monotonic()
        cache = run.run.label_answers(key)
        rows = read_jsonl(cache)
        # an API teacher's own store is its cache: asked again, it re-sends only what failed
        if teacher.remote or rows is None or len(rows) != len(data.train) + len(data.dev):
            texts = [*data.train.texts, *data.dev.texts]
            rows = answer_rows(teacher.label_texts(texts, progress=run.progress))
            write_jsonl(cache, rows)
        docs = [
            FieldDoc(r["fields"], tuple(Span(a, b, f) for a, b, f in r["spans"]))
            if r.get("valid", True)
            else None
            for r in rows
        ]
        n = len(data.train)
        agreement, gold_rows = _audit(teacher, docs, data, run.log)
        unanswered = {"train": docs[:n].count(None), "dev": docs[n:].count(None)}
        if unanswered["train"] or unanswered["dev"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(_invalid(teacher).items()))
            run.log(
                f"[labels] the teacher's answer could not be read for {unanswered['train']} "
                f"training and {unanswered['dev']} dev texts"
                + (f" ({reasons})" if reasons else "")
                + ": left out of training"
            )
            keep = [i for i, d in enumerate(docs) if d is not None]
            data = run.dataset = replace(
                data,
                train=data.train.subset([i for i in keep if i < n]),
                dev=data.dev.subset([i - n for i in keep if i >= n]),
            )
            n = len(data.train)
        kept: list[FieldDoc] = [d for d in docs if d is not None]
        absent = sum(sum(map(len, d.values.values())) - len(d.spans or ()) for d in kept)
        if absent:
            run.log(
                f"[labels] {absent} of the teacher's values are not in their text: counted, and "
                "left out of a tagger's targets (never invented)"
            )
        train, dev = kept[:n], kept[n:]
        run.store.write_labels_summary(
            LabelsSummary(
                gold_agreement=agreement,
                gold_rows=gold_rows,
                train=len(train),
                dev=len(dev),
                unanswered=unanswered,
                seconds=round(time.monotonic() - started, 1),
            )
        )
        return Labels(train, dev, key)

    def distill(
        self, student: Any, dataset: FieldDataset, labels: Labels, out_dir: Path, progress: bool
    ) -> None:
        if student.kind == "generator":
            from smallfit.distill.generator import distill_generator

            distill_generator(
                student,
                dataset.train.texts,
                [None if d is None else d.values for d in labels.train],
                dataset.schema,
                out_dir,
                teacher="gold" if labels.source == "gold" else TEACHER,
                progress=progress,
            )
            return

        from smallfit.models.tagger import TokenTagger
        from smallfit.train.tagging import train_tagger

        model = TokenTagger.from_base(
            student.base,
            dataset.schema,
            name=student.name,
            max_length=student.train.max_length,
            seed=student.train.seed,
        )
        spans, missing = targets(labels.train, dataset.train.texts)
        train_tagger(model, dataset.train.texts, spans, student.train, progress=progress)
        model.lineage.update(
            teacher=TEACHER,
            trained_on="gold fields" if labels.source == "gold" else "teacher answers",
            train_examples=len(dataset.train),
            values_not_in_text=missing,
        )
        model.save(out_dir)

    def test_key(self, dataset: FieldDataset) -> str:
        return hash_json([hash_texts(dataset.test.texts), _docs_key(dataset.test.docs)])

    def evaluate(self, run: Any, name: str, teacher_answers: Any) -> tuple[CandidateResult, Any]:
        from smallfit.evaluate.extract import evaluate_extractor

        return evaluate_extractor(
            run.run.model(name),
            test=run.dataset.test,
            schema=run.dataset.schema,
            teacher_answers=teacher_answers,
            is_teacher=name == TEACHER,
            config=run.config.evaluate,
            progress=run.progress,
        )

    def build_cascade(
        self,
        run: Any,
        config: Any,
        candidates: list[CandidateResult],
        chosen: str | None,
        teacher_dev: Any,
        metric: str,
    ) -> Any:
        from smallfit.evaluate.extract import evaluate_extractor
        from smallfit.route.fields import build_field_cascade

        def evaluate(
            model_dir: Path, teacher_answers: Any, known: Any = None
        ) -> tuple[CandidateResult, Any]:
            return evaluate_extractor(
                model_dir,
                test=run.dataset.test,
                schema=run.dataset.schema,
                teacher_answers=teacher_answers,
                is_teacher=False,
                config=run.config.evaluate,
                progress=run.progress,
                known=known,
            )

        return build_field_cascade(
            run.dir,
            config,
            dataset=run.dataset,
            candidates=candidates,
            chosen=chosen,
            teacher_dev=teacher_dev,
            metric=metric,
            evaluate=evaluate,
            log=run.log,
        )

    def answer_files(self, store: Run, name: str) -> tuple[Path, ...]:
        return store.dir.result(name), store.dir.test_answers(name)

    def save_answers(self, store: Run, result: CandidateResult, answers: Any) -> None:
        store.save_answers(result, answers)

    def read_answers(self, store: Run, name: str) -> Any:
        return store.read_answers(name)
