"""``fit``: data -> teacher -> labels -> students -> evaluate -> select, with stage reuse.

Each stage has a key: the hash of its config and of its inputs' keys. A stage whose key matches
the one recorded in ``stages.json`` and whose outputs exist is skipped, so a rerun after a crash
or Ctrl-C loses at most the stage in flight. Outputs are written before their key is recorded.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.config import FitConfig, GoldTeacher, dump_fit_config
from smallfit.data import Dataset, load_dataset
from smallfit.hashing import hash_json, hash_texts
from smallfit.models.base import write_json

TEACHER = "teacher"


@dataclass(frozen=True)
class FitResult:
    """Where the run lives and what it chose."""

    run_dir: Path
    results: dict[str, Any]
    table: str
    selection_json: str
    chosen: str | None
    stages_run: list[str]
    stages_skipped: list[str]


class _Stages:
    """Records finished stages in ``run_dir/stages.json``."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]) -> None:
        self.file = run_dir / "stages.json"
        self.done: dict[str, Any] = {}
        if self.file.is_file():
            try:
                self.done = json.loads(self.file.read_text("utf-8"))
            except json.JSONDecodeError:
                self.done = {}
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def fresh(self, name: str, key: str, *outputs: Path) -> bool:
        entry = self.done.get(name)
        if entry and entry.get("key") == key and all(p.exists() for p in outputs):
            self.skipped.append(name)
            self.log(f"[{name}] up to date, skipped")
            return True
        self.log(f"[{name}] running")
        return False

    def finish(self, name: str, key: str, started: float) -> None:
        seconds = round(time.monotonic() - started, 1)
        self.done[name] = {"key": key, "seconds": seconds, "finished": time.time()}
        write_json(self.file, self.done)
        self.ran.append(name)
        self.log(f"[{name}] done in {seconds:.0f}s")


def _data_key(dataset: Dataset) -> str:
    return hash_json(
        {
            split: [hash_texts(part.texts), hash_texts(part.labels)]
            for split, part in (
                ("train", dataset.train),
                ("dev", dataset.dev),
                ("test", dataset.test),
            )
        }
    )


def fit(
    config: FitConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> FitResult:
    """Run the whole chain into ``config.run_dir``; returns what was measured and chosen."""
    from smallfit.distill import distill_student
    from smallfit.evaluate import evaluate_candidate, write_results
    from smallfit.models.base import load
    from smallfit.select import format_table, select, selection_json
    from smallfit.teach import build_teacher, label_pool, one_hot

    run = Path(config.run_dir)
    (run / "models").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_fit_config(config), encoding="utf-8")
    stages = _Stages(run, log)

    started = time.monotonic()
    dataset = load_dataset(config.data)
    data_key = _data_key(dataset)
    log(
        f"[data] {len(dataset.train)} train / {len(dataset.dev)} dev / {len(dataset.test)} test, "
        f"{len(dataset.labels)} labels"
    )
    write_json(
        run / "data.json",
        {
            "train": len(dataset.train),
            "dev": len(dataset.dev),
            "test": len(dataset.test),
            "labels": dataset.labels,
            "key": data_key,
            "config": config.data.model_dump(mode="json"),
        },
    )

    # teacher
    teacher_dir = run / "models" / TEACHER
    teacher_key = hash_json({"teacher": config.teacher.model_dump(mode="json"), "data": data_key})
    gold_teacher = isinstance(config.teacher, GoldTeacher)
    teacher = None
    if not gold_teacher and stages.fresh(TEACHER, teacher_key, teacher_dir):
        teacher = load(teacher_dir)
    elif not gold_teacher:
        t0 = time.monotonic()
        shutil.rmtree(teacher_dir, ignore_errors=True)
        teacher = build_teacher(config.teacher, dataset, out_dir=teacher_dir, progress=progress)
        stages.finish(TEACHER, teacher_key, t0)

    # teacher labels for the training pool and dev (gold teacher: one-hot gold)
    if teacher is None:
        train_probs = one_hot(dataset.train.labels, dataset.labels)
        dev_probs = one_hot(dataset.dev.labels, dataset.labels)
        labels_key = hash_json({"gold": data_key})
    else:
        t0 = time.monotonic()
        pools = {}
        for split in ("train", "dev"):
            pools[split] = label_pool(
                teacher,
                getattr(dataset, split).texts,
                labels=dataset.labels,
                teacher_dir=teacher_dir,
                cache_dir=run / "labels",
                progress=progress,
            )
        train_probs, dev_probs = pools["train"], pools["dev"]
        labels_key = hash_json({"teacher": teacher_key, "data": data_key})
        agreement = float(
            (
                train_probs.argmax(1)
                == np.array([dataset.labels.index(g) for g in dataset.train.labels])
            ).mean()
        )
        log(f"[labels] teacher agrees with gold on {agreement:.1%} of the training pool")
        write_json(
            run / "labels" / "summary.json",
            {
                "train_gold_agreement": agreement,
                "train": len(train_probs),
                "dev": len(dev_probs),
                "seconds": round(time.monotonic() - t0, 1),
            },
        )

    # students
    student_keys: dict[str, str] = {}
    for student in config.students:
        name = student.name
        out = run / "models" / name
        key = hash_json({"student": student.model_dump(mode="json"), "labels": labels_key})
        student_keys[name] = key
        if stages.fresh(f"student:{name}", key, out):
            continue
        t0 = time.monotonic()
        shutil.rmtree(out, ignore_errors=True)
        distill_student(
            student,
            dataset,
            train_probs=train_probs,
            dev_probs=dev_probs,
            out_dir=out,
            progress=progress,
        )
        stages.finish(f"student:{name}", key, t0)

    # evaluate: the teacher first, so the students can be compared with its test answers
    eval_cfg = config.evaluate.model_dump(mode="json")
    test_key = hash_json([hash_texts(dataset.test.texts), hash_texts(dataset.test.labels)])
    candidates: list[dict[str, Any]] = []
    teacher_test_probs = None
    order = ([TEACHER] if teacher is not None else []) + [s.name for s in config.students]
    model_keys = {TEACHER: teacher_key, **student_keys}
    for name in order:
        out_file = run / "results" / f"{name}.json"
        probs_file = run / "results" / f"{name}.test_probs.npy"
        key = hash_json(
            {
                "eval": eval_cfg,
                "model": model_keys[name],
                "test": test_key,
                "teacher": teacher_key if name != TEACHER else None,
            }
        )
        if stages.fresh(f"evaluate:{name}", key, out_file, probs_file):
            result = json.loads(out_file.read_text("utf-8"))
        else:
            t0 = time.monotonic()
            (run / "results").mkdir(exist_ok=True)
            result = evaluate_candidate(
                run / "models" / name,
                test=dataset.test,
                teacher_test_probs=teacher_test_probs,
                config=config.evaluate,
                out_file=out_file,
                probs_file=probs_file,
            )
            stages.finish(f"evaluate:{name}", key, t0)
        if name == TEACHER:
            teacher_test_probs = np.load(probs_file, allow_pickle=False)
        candidates.append(result)

    selection = select(candidates, config.select, teacher_name=TEACHER)
    table = format_table(candidates, selection, metric=config.select.metric)
    line = selection_json(candidates, selection)
    results = write_results(
        run,
        candidates,
        extra={
            "selection": json.loads(line),
            "config": config.model_dump(mode="json"),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    return FitResult(
        run_dir=run,
        results=json.loads(Path(results).read_text("utf-8")),
        table=table,
        selection_json=line,
        chosen=selection.chosen,
        stages_run=stages.ran,
        stages_skipped=stages.skipped,
    )
