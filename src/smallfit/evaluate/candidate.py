"""One candidate, measured: quality on the test split, speed and memory, size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smallfit.config import EvalConfig
from smallfit.data import Split
from smallfit.evaluate.quality import quality_metrics
from smallfit.evaluate.speed import measure_speed
from smallfit.models.base import BaseClassifier, align_probs, dir_bytes, load, write_json

PREDICT_BATCH = 64
SPEED_TEXTS = 256


def evaluate_candidate(
    model_dir: Path,
    *,
    test: Split,
    teacher_test_probs: np.ndarray | None,
    config: EvalConfig,
    out_file: Path | None = None,
    probs_file: Path | None = None,
    teacher_labels: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure the model saved in ``model_dir`` on ``test``.

    ``teacher_test_probs`` (one row per test text) uses the model's label order, or
    ``teacher_labels`` when given (its columns are then reordered to the model's labels).

    Returns ``{"name", "backend", "model_dir", "parameters", "bytes_on_disk", "lineage",
    "quality": quality_metrics(...), "speed": measure_speed(...)}`` and, when ``out_file`` is
    given, also writes it there as JSON; ``probs_file`` receives the test probabilities (.npy).
    """
    model_dir = Path(model_dir)
    model = load(model_dir)
    probs = predict_in_batches(model, test.texts, progress=progress)
    if probs_file is not None:
        Path(probs_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(probs_file).with_suffix(".tmp.npy")
        np.save(tmp, probs.astype(np.float32), allow_pickle=False)
        tmp.replace(probs_file)
    teacher = None
    if teacher_test_probs is not None:
        teacher = align_probs(
            np.asarray(teacher_test_probs), teacher_labels or model.labels, model.labels
        )
    quality = quality_metrics(
        probs, list(test.labels), model.labels, teacher_probs=teacher, ece_bins=config.ece_bins
    )
    info = model.info.to_dict()
    del model  # the speed probe loads its own copy
    speed = measure_speed(model_dir, list(test.texts[:SPEED_TEXTS]), config)
    result = {
        "name": info["name"],
        "backend": info["backend"],
        "model_dir": str(model_dir),
        "parameters": info["parameters"],
        "bytes_on_disk": dir_bytes(model_dir),
        "lineage": info["lineage"],
        "quality": quality,
        "speed": speed,
    }
    if out_file is not None:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(out_file, result)
    return result


def predict_in_batches(
    model: BaseClassifier,
    texts: Sequence[str],
    *,
    batch: int = PREDICT_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """``model.predict_proba`` over ``texts`` in chunks of ``batch``; shape (n, len(labels))."""
    if len(texts) == 0:
        return np.zeros((0, len(model.labels)), dtype=np.float32)
    parts = []
    with tqdm(
        total=len(texts), desc=f"{model.name}: test predictions", unit="text", disable=not progress
    ) as bar:
        for i in range(0, len(texts), batch):
            parts.append(model.predict_proba(list(texts[i : i + batch])))
            bar.update(len(parts[-1]))
    return np.concatenate(parts, axis=0)
