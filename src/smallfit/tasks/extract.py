"""The ``extract`` task: text -> a JSON object of declared fields.

Labels are the teacher's answers (fields and spans) on the pool, or gold; a tagger student
learns the spans. A teacher's value that is not in its text (an LLM's, later) is counted and
left out of the student's targets, never invented. Answers on test are JSONL rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallfit.data.fields import FieldDataset, FieldDoc, align, load_field_dataset
from smallfit.fields import Span
from smallfit.hashing import hash_json, hash_texts
from smallfit.run.layout import TEACHER
from smallfit.run.records import CandidateResult, DataSummary, LabelsSummary
from smallfit.run.store import read_jsonl, write_jsonl
from smallfit.tasks.base import Labels, Task, data_line

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


def targets(docs: list[FieldDoc | None], texts: list[str]) -> tuple[list[list[Span]], int]:
    """Each row's spans to train on: its own, else its values aligned to the text; and how
    many values were not found in their text (left out)."""
    out: list[list[Span]] = []
    missing = 0
    for doc, text in zip(docs, texts, strict=True):
        if doc is None:
            out.append([])
        elif doc.spans is not None:
            out.append(list(doc.spans))
        else:
            spans, absent = align(text, doc.values)
            out.append(spans)
            missing += len(absent)
    return out, missing


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
        """A tagger on ``teacher.base`` trained on the gold fields (the stand-in for the big
        model)."""
        from smallfit.models.tagger import TokenTagger
        from smallfit.train.tagging import train_tagger

        teacher = config.teacher
        train = teacher.train  # type: ignore[union-attr]  # a finetune teacher (config checks)
        model = TokenTagger.from_base(
            teacher.base,  # type: ignore[union-attr]
            dataset.schema,
            name=TEACHER,
            max_length=train.max_length,
            seed=train.seed,
        )
        spans, _ = targets(dataset.train.docs, dataset.train.texts)
        train_tagger(model, dataset.train.texts, spans, train, progress=progress)
        model.lineage["recipe"] = "fine-tuned on gold fields"
        model.save(out_dir)
        return model

    def label(self, run: Any, teacher: Any) -> Labels:
        """The teacher's answers on train and dev (cached in the run by their key), or gold."""
        data: FieldDataset = run.dataset
        if teacher is None:
            gold = hash_json({"gold": run.data_key})
            return Labels(data.train.docs, data.dev.docs, gold, source="gold")
        key = hash_json({"teacher": run.keys[TEACHER], "data": run.data_key})
        started = time.monotonic()
        cache = run.run.label_answers(key)
        rows = read_jsonl(cache)
        if rows is None or len(rows) != len(data.train) + len(data.dev):
            answers = teacher.extract([*data.train.texts, *data.dev.texts])
            rows = [
                {"fields": a.values, "spans": [[s.start, s.end, s.field] for s in a.spans]}
                for a in answers
            ]
            write_jsonl(cache, rows)
        docs = [FieldDoc(r["fields"], tuple(Span(a, b, f) for a, b, f in r["spans"])) for r in rows]
        train, dev = docs[: len(data.train)], docs[len(data.train) :]
        pool = zip(docs, [*data.train.docs, *data.dev.docs], strict=True)
        pairs = [(d, g) for d, g in pool if g is not None]
        agreement = sum(d.values == g.values for d, g in pairs) / len(pairs) if pairs else None
        if agreement is not None:
            run.log(
                f"[labels] the teacher's fields equal gold on {100 * agreement:.2f}% of the "
                f"{len(pairs)} pool texts with gold (every field right)"
            )
        run.store.write_labels_summary(
            LabelsSummary(
                gold_agreement=agreement,
                gold_rows=len(pairs),
                train=len(train),
                dev=len(dev),
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

        def evaluate(model_dir: Path, teacher_answers: Any) -> tuple[CandidateResult, Any]:
            return evaluate_extractor(
                model_dir,
                test=run.dataset.test,
                schema=run.dataset.schema,
                teacher_answers=teacher_answers,
                is_teacher=False,
                config=run.config.evaluate,
                progress=run.progress,
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
