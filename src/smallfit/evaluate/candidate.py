"""One candidate, measured: quality on the test split, speed and memory, size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smallfit.data import Split
from smallfit.evaluate.config import EvalConfig
from smallfit.evaluate.quality import quality_metrics
from smallfit.evaluate.roofline import mean_query_tokens, peak_rates, precision_of, roofline
from smallfit.evaluate.speed import batched_throughput, measure_speed
from smallfit.models.base import (
    BaseClassifier,
    align_probs,
    load,
    manifest_with_architecture,
)
from smallfit.run.records import CandidateResult

PREDICT_BATCH = 64
SPEED_TEXTS = 256


@dataclass(frozen=True)
class Measured:
    """A candidate's results and its answers on the test split (one row per test text, in the
    model's label order)."""

    result: CandidateResult
    test_probs: np.ndarray


def measured(
    info: dict[str, Any],
    *,
    model_dir: Path,
    probs: np.ndarray,
    test: Split,
    labels: list[str],
    teacher_probs: np.ndarray | None,
    ece_bins: int,
    speed: dict[str, Any],
    cost: dict[str, Any] | None,
    unanswered: np.ndarray | None = None,
    roofline: dict[str, Any] | None = None,
    cascade: dict[str, Any] | None = None,
    quality_extra: dict[str, Any] | None = None,
) -> CandidateResult:
    """A candidate's results from its test answers and measured speed: the one place a result
    is built (evaluation and the cascade stage both come here). ``info`` is
    ``ModelInfo.to_dict()`` (its size on disk measured when the model was loaded or saved);
    ``teacher_probs`` uses ``labels``' columns; ``quality_extra`` joins the quality record."""
    quality = quality_metrics(
        probs,
        list(test.labels),
        labels,
        teacher_probs=teacher_probs,
        ece_bins=ece_bins,
        unanswered=unanswered,
    ) | (quality_extra or {})
    return CandidateResult.of(
        info,
        model_dir=str(model_dir),
        quality=quality,
        speed=speed,
        cost=cost,
        roofline=roofline,
        cascade=cascade,
    )


def evaluate_candidate(
    model_dir: Path,
    *,
    test: Split,
    teacher_test_probs: np.ndarray | None,
    config: EvalConfig,
    teacher_labels: list[str] | None = None,
    is_teacher: bool = False,
    progress: bool = False,
    peaks: dict[str, Any] | None = None,
    peaks_file: Path | None = None,
) -> Measured:
    """Measure the model saved in ``model_dir`` on ``test``: quality against gold and the
    teacher, speed and memory, size, cost, and the roofline.

    ``teacher_test_probs`` (one row per test text) uses the model's label order, or
    ``teacher_labels`` when given (its columns are then reordered to the model's labels).
    ``is_teacher``: the model is the teacher, so its agreement with the teacher is with its own
    answers (100%, less its unanswered texts): a floor relative to the teacher's agreement is
    then the agreement itself.

    ``roofline`` relates the batch-1 p50 at 1 thread to ``peaks`` (:func:`peak_rates` at 1
    thread); it is None for models without an ``architecture`` in their manifest (linear models)
    or without a 1-thread latency. When ``peaks`` is None they are measured once per process,
    and kept in ``peaks_file`` when given.
    """
    model_dir = Path(model_dir)
    model = load(model_dir)
    probs = predict_in_batches(model, test.texts, progress=progress)
    teacher = probs if is_teacher else None
    if teacher_test_probs is not None:
        teacher = align_probs(
            np.asarray(teacher_test_probs), teacher_labels or model.labels, model.labels
        )
    unanswered = model.unanswered(test.texts)  # an LLM's unparseable replies
    unseen = _unseen_vocab(model_dir, test, probs, list(model.labels))
    info, labels = model.info.to_dict(), list(model.labels)
    speed_texts = list(test.texts[:SPEED_TEXTS])
    manifest = manifest_with_architecture(model_dir)
    tokens = None
    if manifest.get("architecture") and speed_texts:
        # the texts the batch-1 latency loop sends, in its order (see speed.interleaved_latency)
        sent = [speed_texts[i % len(speed_texts)] for i in range(config.latency_queries)]
        tokens = mean_query_tokens(model, sent)
    own_speed = model.measured_speed()
    if own_speed is not None:
        # behind an API: the latencies of the real requests in the ledger, and token prices
        speed, cost = own_speed, model.measured_cost()
        model.close()
    else:
        del model  # the speed probe loads its own copy
        speed = measure_speed(model_dir, speed_texts, config)
        cost = local_cost(speed, config)
    if unseen is not None:
        quality_extra: dict[str, Any] = {"unseen_vocab": unseen}
    else:
        quality_extra = {}
    result = measured(
        info,
        model_dir=model_dir,
        quality_extra=quality_extra,
        probs=probs,
        test=test,
        labels=labels,
        teacher_probs=teacher,
        ece_bins=config.ece_bins,
        unanswered=unanswered,
        speed=speed,
        cost=cost,
        roofline=_roofline(manifest, tokens, speed=speed, peaks=peaks, peaks_file=peaks_file),
    )
    return Measured(result, probs.astype(np.float32))


def _unseen_vocab(
    model_dir: Path, test: Split, probs: np.ndarray, labels: list[str]
) -> dict[str, Any] | None:
    """A trimmed vocabulary's accuracy on the gold test texts holding a token it dropped, and
    on the others; None for a model whose vocabulary was not trimmed."""
    from smallfit.models.vocab import unseen_rows, untrimmed_tokenizer

    untrimmed = untrimmed_tokenizer(model_dir)
    if untrimmed is None:
        return None
    unseen = unseen_rows(untrimmed, model_dir, test.texts)
    gold = np.array(test.gold, dtype=bool)
    index = {label: i for i, label in enumerate(labels)}
    rows = zip(gold, test.labels, probs, strict=True)
    right = np.array([g and index.get(y) == int(p.argmax()) for g, y, p in rows], dtype=bool)

    def share(mask: np.ndarray) -> float | None:
        return float(right[mask].mean()) if mask.any() else None

    return {
        "texts": int(unseen.sum()),
        "gold_texts": int((unseen & gold).sum()),
        "accuracy": share(unseen & gold),
        "accuracy_on_others": share(~unseen & gold),
    }


def per_1m_at(hour_usd: float, per_s: float | None) -> float | None:
    """Dollars per million queries on a machine at ``hour_usd`` an hour, answering in batches
    at ``per_s`` texts a second (the measured batched throughput, all threads); None without a
    throughput (an API model)."""
    return hour_usd / 3600.0 / per_s * 1e6 if per_s else None


def local_cost(speed: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """Cost per million queries on this machine at ``config.machine_hour_usd``, answering in
    batches at the measured throughput (all threads)."""
    return {
        "per_1m_queries_usd": per_1m_at(config.machine_hour_usd, batched_throughput(speed)),
        "basis": f"this machine at ${config.machine_hour_usd}/hour, batched throughput",
    }


def _roofline(
    manifest: dict[str, Any],
    tokens: float | None,
    *,
    speed: dict[str, Any],
    peaks: dict[str, Any] | None,
    peaks_file: Path | None,
) -> dict[str, Any] | None:
    one = speed.get("threads", {}).get("1")
    if not manifest.get("architecture") or tokens is None or not one:
        return None
    if peaks is None:
        peaks = peak_rates(1, cache_file=peaks_file)
    return roofline(
        manifest["architecture"],
        tokens,
        p50_ms=float(one["p50_ms"]),
        precision=precision_of(manifest),
        peaks=peaks,
    )


def predict_in_batches(
    model: BaseClassifier,
    texts: Sequence[str],
    *,
    batch: int = PREDICT_BATCH,
    progress: bool = False,
    what: str = "test",
) -> np.ndarray:
    """``model.predict_proba`` over ``texts`` in chunks of ``batch``; shape (n, len(labels))."""
    if len(texts) == 0:
        return np.zeros((0, len(model.labels)), dtype=np.float32)
    parts = []
    with tqdm(
        total=len(texts),
        desc=f"{model.name}: {what} predictions",
        unit="text",
        disable=not progress,
    ) as bar:
        for i in range(0, len(texts), batch):
            parts.append(model.predict_proba(list(texts[i : i + batch])))
            bar.update(len(parts[-1]))
    return np.concatenate(parts, axis=0)
