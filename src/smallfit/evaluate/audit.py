"""The teacher's audit: its answers on the pool against the gold labels the pool has, measured
before anything is distilled from them."""

from __future__ import annotations

from typing import Any

import numpy as np

from smallfit.data import Dataset
from smallfit.evaluate.bootstrap import mean_interval


def audit_teacher(
    dataset: Dataset, train: np.ndarray, dev: np.ndarray
) -> tuple[dict[str, Any], str]:
    """``LabelsSummary``'s audit fields for the teacher's probabilities on train and dev (in
    ``dataset.labels`` order), and the line that says it."""
    index = {label: i for i, label in enumerate(dataset.labels)}
    right = np.concatenate(
        [
            p[split.gold].argmax(1)
            == np.array([index[y] for y in split.labels if y in index], dtype=np.int64)
            for p, split in ((train, dataset.train), (dev, dataset.dev))
        ]
    )
    pool = len(dataset.train) + len(dataset.dev)
    if right.size == 0:
        return {"gold_rows": 0}, (
            f"no text of the pool ({pool}) has a gold label: every candidate is scored by its "
            "agreement with the teacher"
        )
    share, ci = float(right.mean()), mean_interval(right)
    where = "every text" if right.size == pool else f"the {right.size} of {pool} texts"
    return {"gold_agreement": share, "gold_agreement_ci95": ci, "gold_rows": int(right.size)}, (
        f"audit: the teacher agrees with gold on {share:.1%} (95% CI {ci[0]:.1%}-{ci[1]:.1%}) "
        f"of {where} of the pool with a gold label"
    )
