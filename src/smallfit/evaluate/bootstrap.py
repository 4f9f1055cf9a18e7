"""95% intervals for quality figures: a seeded percentile bootstrap over the test texts, and
paired intervals for a model's difference from the teacher (both scored on the same resampled
texts, so what the two models share cancels out).

Every resample draws ``n`` of the ``n`` test rows with replacement; a figure's interval is the
2.5th and 97.5th percentiles of its value over the resamples. The resamples are drawn from a
fixed seed, so the same test set gets the same intervals in every run and for every candidate.
Macro-F1 is computed per resample from confusion counts (one ``bincount`` over all resamples at
once), averaging over the classes present (in gold or predicted) in that resample, as
:func:`~smallfit.evaluate.quality.quality_metrics` does on the whole set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
BLOCK = 200  # resamples scored at once: memory ~ BLOCK x n x 8 bytes a few times over


def _scores(
    idx: np.ndarray, gold: np.ndarray, pred: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 on each row of ``idx`` (one resample of row numbers per row).

    ``gold`` and ``pred`` are class indices below ``classes``; ``pred == classes`` is no answer
    (wrong, and not a class of its own)."""
    b = idx.shape[0]
    g, p = gold[idx], pred[idx]
    hit = g == p
    k = classes + 1
    offset = (np.arange(b, dtype=np.int64) * k)[:, None]
    gk = (g + offset).ravel()
    support = np.bincount(gk, minlength=b * k).reshape(b, k)[:, :classes]
    predicted = np.bincount((p + offset).ravel(), minlength=b * k).reshape(b, k)[:, :classes]
    hits = np.bincount(gk[hit.ravel()], minlength=b * k).reshape(b, k)[:, :classes]
    both = support + predicted
    present = both > 0
    # F1 = 2PR / (P + R) = 2 hits / (support + predicted)
    f1 = np.divide(2.0 * hits, both, out=np.zeros(both.shape), where=present)
    return hit.mean(axis=1), f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _ece(idx: np.ndarray, confidence: np.ndarray, correct: np.ndarray, bins: int) -> np.ndarray:
    b = idx.shape[0]
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    keys = (which[idx] + (np.arange(b, dtype=np.int64) * bins)[:, None]).ravel()
    conf = np.bincount(keys, weights=confidence[idx].ravel(), minlength=b * bins)
    acc = np.bincount(keys, weights=correct[idx].ravel(), minlength=b * bins)
    return np.abs(acc - conf).reshape(b, bins).sum(axis=1) / idx.shape[1]


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def quality_intervals(
    gold: np.ndarray,
    pred: np.ndarray,
    *,
    classes: int,
    confidence: np.ndarray,
    ece_bins: int,
    agree: np.ndarray | None = None,
    teacher_pred: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """``{"ci95", "vs_teacher", "bootstrap"}`` for a model's predictions on ``n`` test rows.

    ``gold``/``pred``/``teacher_pred`` are class indices below ``classes`` (``classes`` itself:
    no answer); ``confidence`` is the model's top probability per row, ``agree`` whether it
    agrees with the teacher per row.

    - ``ci95``: ``{"accuracy", "macro_f1", "teacher_agreement", "ece"}``, each ``[lo, hi]``
      (``teacher_agreement`` None without ``agree``);
    - ``vs_teacher``: ``{"accuracy", "macro_f1"}``, each ``{"diff", "ci95"}`` = the model's
      figure minus the teacher's on the same rows and its paired interval (None without
      ``teacher_pred``);
    - ``bootstrap``: how the intervals were drawn (method, resamples, seed, level).
    """
    n = len(gold)
    correct = (gold == pred).astype(np.float64)
    rng = np.random.default_rng(seed)
    acc, f1, ece, agreement, d_acc, d_f1 = [], [], [], [], [], []
    for start in range(0, resamples, BLOCK):
        idx = rng.integers(0, n, size=(min(BLOCK, resamples - start), n))
        a, f = _scores(idx, gold, pred, classes)
        acc.append(a)
        f1.append(f)
        ece.append(_ece(idx, confidence, correct, ece_bins))
        if agree is not None:
            agreement.append(agree[idx].mean(axis=1))
        if teacher_pred is not None:
            ta, tf = _scores(idx, gold, teacher_pred, classes)
            d_acc.append(a - ta)
            d_f1.append(f - tf)
    ci = {
        "accuracy": _interval(np.concatenate(acc), level),
        "macro_f1": _interval(np.concatenate(f1), level),
        "teacher_agreement": _interval(np.concatenate(agreement), level) if agreement else None,
        "ece": _interval(np.concatenate(ece), level),
    }
    paired = None
    if teacher_pred is not None:
        whole = np.arange(n)[None, :]
        mine = _scores(whole, gold, pred, classes)
        theirs = _scores(whole, gold, teacher_pred, classes)
        paired = {
            name: {
                "diff": float(mine[i][0] - theirs[i][0]),
                "ci95": _interval(np.concatenate(draws), level),
            }
            for i, (name, draws) in enumerate((("accuracy", d_acc), ("macro_f1", d_f1)))
        }
    return {
        "ci95": ci,
        "vs_teacher": paired,
        "bootstrap": bootstrap_method(resamples, seed, level),
    }


def bootstrap_method(resamples: int, seed: int, level: float = LEVEL) -> dict[str, Any]:
    """How intervals were drawn, as results record it."""
    return {"method": "percentile", "resamples": resamples, "seed": seed, "level": level}


def mean_interval(
    values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> list[float]:
    """The interval of the mean of ``values`` (one per row, e.g. 1.0 where a model agrees with
    the teacher), from the same seeded resampling as :func:`quality_intervals`."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = [
        values[
            rng.integers(0, len(values), size=(min(BLOCK, resamples - start), len(values)))
        ].mean(axis=1)
        for start in range(0, resamples, BLOCK)
    ]
    return _interval(np.concatenate(means), level)


def teacher_answers(teacher_probs: np.ndarray, no_answer: int) -> np.ndarray:
    """The teacher's predicted class per row; ``no_answer`` where its top probability is shared
    by several labels (an API teacher's unparseable reply is a uniform row: counted as no
    answer, as its own evaluation counts it, rather than as whichever label comes first)."""
    top = teacher_probs.max(axis=1, keepdims=True)
    tied = (teacher_probs == top).sum(axis=1) > 1
    return np.where(tied, no_answer, teacher_probs.argmax(axis=1))
