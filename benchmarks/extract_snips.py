"""Issue 16: field extraction on SNIPS slots, the encoder path. An mpnet-base token tagger
trained on gold is the teacher (the stand-in for an LLM); it labels the training pool, and a
MiniLM-L6 tagger is distilled from its answers (the values aligned to spans in the text). Both
are scored on the 700 test texts against gold and against the teacher, with 95% bootstrap
intervals, and timed at batch 1 on one thread, interleaved text by text.

    .venv/bin/python benchmarks/extract_snips.py --work /tmp/extract   # trains, then measures
    .venv/bin/python benchmarks/extract_snips.py --work /tmp/extract --measure-only

Writes ``benchmarks/results/extract_snips.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _report import save_and_report

from smallfit.data.fields import read_field_split, schema_of
from smallfit.evaluate import environment
from smallfit.evaluate.fields import field_quality
from smallfit.models.tagger import TokenTagger
from smallfit.stats import latency_percentiles
from smallfit.train.config import TrainConfig
from smallfit.train.tagging import train_tagger

TARGETS = {
    "teacher_micro_f1_min": 0.95,
    "student_share_of_teacher_f1_min": 0.98,
    "speedup_min": 10.0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/snips_slots"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--teacher-epochs", type=float, default=3.0)
    parser.add_argument("--student-epochs", type=float, default=3.0)
    parser.add_argument("--latency-texts", type=int, default=300)
    parser.add_argument("--measure-only", action="store_true")
    args = parser.parse_args()

    train = read_field_split(args.data / "train.jsonl", schema=None)
    test = read_field_split(args.data / "test.jsonl", schema=None)
    schema = schema_of([train, test])
    teacher_dir, student_dir = args.work / "teacher", args.work / "student"
    seconds: dict[str, float] = {}
    if not args.measure_only:
        started = time.perf_counter()
        teacher = TokenTagger.from_base("mpnet-base", schema, name="teacher")
        spans = [d.spans or () for d in train.docs if d is not None]
        config = TrainConfig(epochs=args.teacher_epochs, lr=5e-5, head_lr=1e-3)
        train_tagger(teacher, train.texts, spans, config, log=print)
        teacher.save(teacher_dir)
        seconds["teacher_train"] = time.perf_counter() - started
        started = time.perf_counter()
        labelled = teacher.extract(train.texts)
        seconds["teacher_labels_train"] = time.perf_counter() - started
        started = time.perf_counter()
        student = TokenTagger.from_base("minilm-l6", schema, name="minilm-l6-tagger")
        config = TrainConfig(epochs=args.student_epochs, lr=1e-4, head_lr=2e-3)
        train_tagger(student, train.texts, [a.spans for a in labelled], config, log=print)
        student.lineage["teacher"] = "teacher"
        student.save(student_dir)
        seconds["student_train"] = time.perf_counter() - started

    teacher, student = TokenTagger.load(teacher_dir), TokenTagger.load(student_dir)
    gold = [d.values for d in test.docs if d is not None]
    t_answers = [a.values for a in teacher.extract(test.texts)]
    s_answers = [a.values for a in student.extract(test.texts)]
    tq = field_quality(t_answers, gold, schema)
    sq = field_quality(s_answers, gold, schema)
    s_vs_t = field_quality(s_answers, t_answers, schema)

    for model in (teacher, student):
        model.set_num_threads(1)
    rng = np.random.default_rng(0)
    texts = [test.texts[i] for i in rng.permutation(len(test))[: args.latency_texts]]
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    for i, text in enumerate(texts):
        pair = [("teacher", teacher), ("student", student)]
        for name, model in pair if i % 2 else pair[::-1]:
            t0 = time.perf_counter()
            model.extract([text])
            times[name].append((time.perf_counter() - t0) * 1000)
    lat = {k: latency_percentiles(np.array(v[20:])) for k, v in times.items()}
    ratios = np.array(times["teacher"][20:]) / np.array(times["student"][20:])
    speedup = float(np.median(ratios))
    share = sq.micro_f1 / tq.micro_f1

    def q(x: object) -> dict[str, object]:
        d = x.to_dict()  # type: ignore[attr-defined]
        d["weakest"] = [(n, round(s.f1, 4), s.support) for n, s in x.weakest(5)]  # type: ignore[attr-defined]
        d.pop("per_field")
        return d

    figures = {
        "fields": len(schema),
        "test_texts": len(test),
        "teacher_vs_gold": q(tq),
        "student_vs_gold": q(sq),
        "student_vs_teacher": q(s_vs_t),
        "student_share_of_teacher_f1": share,
        "latency_batch1_1thread_ms": lat,
        "speedup_median_per_text": speedup,
        "sizes_bytes": {"teacher": teacher.bytes_on_disk, "student": student.bytes_on_disk},
        "seconds": seconds,
        "student_backend": "torch fp32 (ONNX and int8 of the tagger: not yet)",
    }
    record = {
        "benchmark": "extract_snips",
        "command": "benchmarks/extract_snips.py --work " + str(args.work),
        "environment": environment(),
        "targets": TARGETS,
        "figures": figures,
        "passed": {
            "teacher_micro_f1_min": tq.micro_f1 >= TARGETS["teacher_micro_f1_min"],
            "student_share_of_teacher_f1_min": share >= TARGETS["student_share_of_teacher_f1_min"],
            "speedup_min": speedup >= TARGETS["speedup_min"],
        },
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
