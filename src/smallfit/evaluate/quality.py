"""Quality of a classifier's probabilities against gold labels and against the teacher."""

from __future__ import annotations

from typing import Any

import numpy as np

from smallfit.data import NO_GOLD
from smallfit.errors import SmallfitError
from smallfit.evaluate.bootstrap import (
    RESAMPLES,
    SEED,
    bootstrap_method,
    mean_interval,
    quality_intervals,
    teacher_answers,
)


def quality_metrics(
    probs: np.ndarray,
    gold: list[str],
    labels: list[str],
    *,
    teacher_probs: np.ndarray | None = None,
    ece_bins: int = 15,
    unanswered: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Accuracy, macro-F1, agreement with the teacher, ECE and per-class scores.

    ``probs`` has shape (len(gold), len(labels)); column ``j`` is the probability of
    ``labels[j]``. ``teacher_probs``, when given, must use the same columns. A gold label that is
    not in ``labels`` can never be predicted, so it counts as wrong (and as a class of its own in
    macro-F1). Macro-F1 averages over the classes present in gold or predicted.

    Returns ``{"accuracy", "macro_f1", "teacher_agreement", "ece", "n", "per_class"}`` where
    ``teacher_agreement`` is None without ``teacher_probs`` and ``per_class`` maps each averaged
    class to ``{"precision", "recall", "f1", "support"}``.

    ``unanswered`` (a boolean mask, e.g. an LLM's unparseable replies) marks rows the model gave
    no answer for: they count as wrong whatever their probabilities say, and as disagreeing
    with the teacher; ``"unanswered"`` in the result counts them.

    Each figure also gets a 95% interval from a seeded percentile bootstrap of the test rows
    (``resamples`` draws; 0 for none), see :mod:`smallfit.evaluate.bootstrap`:

    - ``"ci95"``: ``{"accuracy", "macro_f1", "teacher_agreement", "ece"}``, each ``[lo, hi]``
      (``teacher_agreement`` None without ``teacher_probs``);
    - ``"vs_teacher"``: ``{"accuracy", "macro_f1"}``, each ``{"diff": model - teacher,
      "ci95": [lo, hi]}``, the interval paired (the same resampled rows for both models); None
      without ``teacher_probs``. The teacher's answer is its argmax, except that a row whose
      top probability several labels share (an API teacher's unanswered, uniform row) counts
      as no answer, as the teacher's own evaluation counts it;
    - ``"bootstrap"``: ``{"method", "resamples", "seed", "level"}``.

    With ``resamples=0`` all three are None.

    Rows whose gold label is :data:`NO_GOLD` count for the agreement with the teacher only:
    the gold figures (accuracy, macro-F1, ECE, per class, their intervals and ``vs_teacher``)
    are measured on the rows with gold, and are None when no row has it. ``"n_gold"`` counts
    those rows.
    """
    has_gold = np.array([g != NO_GOLD for g in gold], dtype=bool)
    if not has_gold.all():
        return _part_gold(
            np.asarray(probs),
            gold,
            labels,
            has_gold,
            teacher_probs=teacher_probs,
            ece_bins=ece_bins,
            unanswered=unanswered,
            resamples=resamples,
            seed=seed,
        )
    probs = np.asarray(probs, dtype=np.float64)
    n = len(gold)
    if n == 0:
        raise SmallfitError("cannot measure quality on an empty test set")
    if probs.shape != (n, len(labels)):
        raise SmallfitError(
            f"probabilities have shape {probs.shape}, expected ({n}, {len(labels)}) "
            "(one row per text, one column per label)"
        )
    pred_idx = probs.argmax(axis=1)
    index = {label: i for i, label in enumerate(labels)}
    # unknown gold labels get indices after the model's labels, so they never match a prediction
    unknown = sorted({g for g in gold if g not in index})
    all_labels = list(labels) + unknown
    index.update({label: len(labels) + i for i, label in enumerate(unknown)})
    gold_idx = np.array([index[g] for g in gold], dtype=np.int64)
    missing = np.zeros(n, bool) if unanswered is None else np.asarray(unanswered, bool)
    if missing.shape != (n,):
        raise SmallfitError(f"unanswered mask has shape {missing.shape}, expected ({n},)")
    pred_idx = np.where(missing, len(all_labels), pred_idx)  # an index no gold label has
    correct = pred_idx == gold_idx

    agreement = None
    agree_rows = teacher_pred = None
    if teacher_probs is not None:
        teacher = np.asarray(teacher_probs)
        if teacher.shape != probs.shape:
            raise SmallfitError(
                f"teacher probabilities have shape {teacher.shape}, expected {probs.shape}"
            )
        agree_rows = pred_idx == teacher.argmax(axis=1)
        agreement = float(np.mean(agree_rows))
        teacher_pred = teacher_answers(teacher, len(all_labels))

    per_class = _per_class(gold_idx, pred_idx, [*all_labels, "(unanswered)"])
    per_class.pop("(unanswered)", None)
    macro_f1 = float(np.mean([c["f1"] for c in per_class.values()]))
    confidence = probs.max(axis=1)
    intervals: dict[str, Any] = {"ci95": None, "vs_teacher": None, "bootstrap": None}
    if resamples > 0:
        intervals = quality_intervals(
            gold_idx,
            pred_idx,
            classes=len(all_labels),
            confidence=confidence,
            ece_bins=ece_bins,
            agree=agree_rows,
            teacher_pred=teacher_pred,
            resamples=resamples,
            seed=seed,
        )
    return {
        "accuracy": float(np.mean(correct)),
        "macro_f1": macro_f1,
        "teacher_agreement": agreement,
        "ece": expected_calibration_error(confidence, correct, bins=ece_bins),
        "n": n,
        "n_gold": n,
        "unanswered": int(missing.sum()),
        "per_class": per_class,
        **intervals,
    }


def _part_gold(
    probs: np.ndarray,
    gold: list[str],
    labels: list[str],
    has_gold: np.ndarray,
    *,
    teacher_probs: np.ndarray | None,
    ece_bins: int,
    unanswered: np.ndarray | None,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`quality_metrics` when some rows (or all) have no gold label: the gold figures on
    the rows with gold, the agreement with the teacher on every row."""
    n = len(gold)
    if probs.shape != (n, len(labels)):
        raise SmallfitError(
            f"probabilities have shape {probs.shape}, expected ({n}, {len(labels)}) "
            "(one row per text, one column per label)"
        )
    missing = np.zeros(n, bool) if unanswered is None else np.asarray(unanswered, bool)
    if missing.shape != (n,):
        raise SmallfitError(f"unanswered mask has shape {missing.shape}, expected ({n},)")
    rows = np.flatnonzero(has_gold)
    teacher = None if teacher_probs is None else np.asarray(teacher_probs)
    if rows.size:
        out = quality_metrics(
            probs[rows],
            [gold[i] for i in rows],
            labels,
            teacher_probs=None if teacher is None else teacher[rows],
            ece_bins=ece_bins,
            unanswered=missing[rows],
            resamples=resamples,
            seed=seed,
        )
    else:
        out = {"accuracy": None, "macro_f1": None, "ece": None, "per_class": {}}
        out |= {"ci95": None, "vs_teacher": None, "bootstrap": None}
    agreement = None
    if teacher is not None:
        if teacher.shape != probs.shape:
            raise SmallfitError(
                f"teacher probabilities have shape {teacher.shape}, expected {probs.shape}"
            )
        pred = np.where(missing, -1, probs.argmax(axis=1))
        agree = pred == teacher.argmax(axis=1)
        agreement = float(agree.mean())
        if resamples > 0:
            ci = out["ci95"] or {"accuracy": None, "macro_f1": None, "ece": None}
            interval = mean_interval(agree, resamples=resamples, seed=seed)
            out["ci95"] = ci | {"teacher_agreement": interval}
            out["bootstrap"] = bootstrap_method(resamples, seed)
    return out | {
        "teacher_agreement": agreement,
        "n": n,
        "n_gold": int(rows.size),
        "unanswered": int(missing.sum()),
    }


def _per_class(
    gold_idx: np.ndarray, pred_idx: np.ndarray, all_labels: list[str]
) -> dict[str, dict[str, float | int]]:
    k = len(all_labels)
    support = np.bincount(gold_idx, minlength=k)
    predicted = np.bincount(pred_idx, minlength=k)
    hits = np.bincount(gold_idx[gold_idx == pred_idx], minlength=k)
    out: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(all_labels):
        if support[i] == 0 and predicted[i] == 0:
            continue
        precision = hits[i] / predicted[i] if predicted[i] else 0.0
        recall = hits[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support[i]),
        }
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, bins: int = 15
) -> float:
    """ECE with ``bins`` equal-width confidence bins ``(i/B, (i+1)/B]``.

    The sum over bins of (share of examples in the bin) x |accuracy - mean confidence| in it.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    # |sum(acc) - sum(conf)| / n == (count/n) * |mean acc - mean conf| per bin
    return float(np.sum(np.abs(acc_sum - conf_sum)) / confidence.size)
