"""The out-of-scope evaluation: how many out-of-scope test texts an abstaining tier catches for
the share of in-scope queries it gives up, for every score the tier allows.

For each in-scope loss ``L`` of :data:`LOSSES` a score's curve point holds

- ``caught``: the share of out-of-scope test texts below the score's ``L`` quantile on the
  in-scope test queries, i.e. caught at exactly ``L`` in-scope loss on test (the detector's own
  quality, what papers call the true-positive rate at ``L`` false-positive rate), with a 95%
  percentile bootstrap interval (in-scope and out-of-scope texts resampled apart, seeded);
- ``threshold``, ``caught_dev``, ``lost_dev``: the threshold calibrated on in-scope dev queries
  for ``L`` (as the cascade's is), the share of out-of-scope test texts it catches and the share
  of in-scope test queries it actually loses.

Everything is numpy over scores computed once; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smallfit.route.calibration import abstain_threshold

LOSSES: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 21))
"""In-scope losses of the curve: 1% to 20%."""
HEADLINE_LOSS = 0.05
RESAMPLES = 1000
SEED = 0


def auroc(in_scope: np.ndarray, out_of_scope: np.ndarray) -> float | None:
    """The chance that an in-scope query scores above an out-of-scope one (ties count half)."""
    from scipy.stats import rankdata

    a, b = np.asarray(in_scope, np.float64), np.asarray(out_of_scope, np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def _lower_index(n: int, loss: float) -> int:
    """The row of the sorted scores that ``np.quantile(..., loss, method="lower")`` takes."""
    return int(np.floor(loss * (n - 1) + 1e-12))


def catch_curve(
    *,
    dev: np.ndarray,
    test: np.ndarray,
    oos: np.ndarray,
    losses: Sequence[float] = LOSSES,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """One score's curve (see the module docstring) and its AUROC; ``dev`` and ``test`` hold the
    score on in-scope queries, ``oos`` on out-of-scope test texts."""
    dev, test, oos = (np.asarray(x, np.float64) for x in (dev, test, oos))
    if len(test) == 0 or len(oos) == 0:
        return {"auroc": None, "curve": []}
    return _curve(dev, test, oos, _Resamples(test, oos, resamples=resamples, seed=seed), losses)


def _curve(
    dev: np.ndarray,
    test: np.ndarray,
    oos: np.ndarray,
    boot: _Resamples,
    losses: Sequence[float] = LOSSES,
) -> dict[str, Any]:
    """:func:`catch_curve` on float64 scores, both sets non-empty, with their resamples."""
    ordered = np.sort(test)
    points = []
    for loss in losses:
        cut = ordered[_lower_index(len(test), loss)]
        caught = boot.caught(loss)
        threshold = abstain_threshold(dev, in_scope_loss=loss)
        points.append(
            {
                "loss": loss,
                "caught": float((oos < cut).mean()),
                "interval": [float(np.percentile(caught, 2.5)), float(np.percentile(caught, 97.5))],
                "threshold": threshold,
                "caught_dev": float((oos < threshold).mean()),
                "lost_dev": float((test < threshold).mean()),
            }
        )
    return {"auroc": auroc(test, oos), "curve": points}


class _Resamples:
    """The in-scope and out-of-scope test scores resampled apart, ``resamples`` times: every
    score of one tier gets the same rows from the same seed, so their differences pair."""

    def __init__(self, test: np.ndarray, oos: np.ndarray, *, resamples: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.test = np.sort(test[rng.integers(0, len(test), (resamples, len(test)))], axis=1)
        self.oos = oos[rng.integers(0, len(oos), (resamples, len(oos)))]

    def caught(self, loss: float) -> np.ndarray:
        """The share caught at ``loss`` in each resample."""
        cuts = self.test[:, _lower_index(self.test.shape[1], loss)]
        return (self.oos < cuts[:, None]).mean(axis=1)


def at_loss(curve: Sequence[Mapping[str, Any]], loss: float) -> Mapping[str, Any] | None:
    """The curve point at ``loss`` (None when the curve has none)."""
    return next((p for p in curve if abs(p["loss"] - loss) < 1e-9), None)


def evaluate_scores(
    scores: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray] | str],
    *,
    chosen: str,
) -> dict[str, Any]:
    """Every score's curve: ``scores`` maps a name to its (dev, in-scope test, out-of-scope
    test) values, or to why the tier cannot give it. Also names the score that catches most at
    :data:`HEADLINE_LOSS` (``best``) beside the one configured (``chosen``), and gives each
    score's difference from ``max_prob`` there with a paired 95% interval (``vs_max_prob``)."""
    out: dict[str, Any] = {}
    paired: dict[str, np.ndarray] = {}
    for name, values in scores.items():
        if isinstance(values, str):
            out[name] = {"available": False, "why": values}
            continue
        dev, test, oos = (np.asarray(x, np.float64) for x in values)
        if len(test) == 0 or len(oos) == 0:
            out[name] = {"available": True, "auroc": None, "curve": []}
            continue
        boot = _Resamples(test, oos, resamples=RESAMPLES, seed=SEED)  # the curve's and the pair's
        out[name] = {"available": True, **_curve(dev, test, oos, boot)}
        paired[name] = boot.caught(HEADLINE_LOSS)
    reference = paired.get("max_prob")
    for name, caught in paired.items():
        if reference is not None:
            diff = caught - reference
            point = at_loss(out[name]["curve"], HEADLINE_LOSS) or {}
            base = at_loss(out["max_prob"]["curve"], HEADLINE_LOSS) or {}
            out[name]["vs_max_prob"] = {
                "diff": float(point.get("caught", 0.0) - base.get("caught", 0.0)),
                "interval": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
            }
    ranked = [
        (headline["caught"], name)
        for name, entry in out.items()
        if entry["available"] and (headline := at_loss(entry["curve"], HEADLINE_LOSS)) is not None
    ]
    best = max(ranked)[1] if ranked else None
    return {"headline_loss": HEADLINE_LOSS, "chosen": chosen, "best": best, "scores": out}


def by_label(
    sources: Sequence[str], oos_scores: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Out-of-scope texts caught below ``threshold``, per label they came from."""
    caught = np.asarray(oos_scores) < threshold
    out: dict[str, dict[str, Any]] = {}
    for label in sorted(set(sources)):
        rows = np.array([s == label for s in sources], dtype=bool)
        out[label] = {"n": int(rows.sum()), "caught": float(caught[rows].mean())}
    return out
