"""What the route stage reads of each tier: its model directory, its probabilities on a
split (cached in the run by the model's content and the texts), its cost and p50."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.evaluate.candidate import predict_in_batches
from smallfit.evaluate.config import EvalConfig
from smallfit.hashing import hash_dir, hash_json, hash_texts
from smallfit.models.base import BaseClassifier, align_probs, load, write_npy
from smallfit.route.calibration import TierOutputs
from smallfit.run.layout import RunDir
from smallfit.run.records import CandidateResult

__all__ = ["TierProbs", "front_outputs", "tier_dir", "tier_facts"]


def tier_dir(run_dir: Path, name: str) -> Path:
    inside = RunDir(run_dir).model(name)
    if inside.is_dir():
        return inside
    if Path(name).is_dir():
        return Path(name)
    raise SmallfitError(
        f"route tier {name!r} is neither a model of the run ({inside}) nor a model directory"
    )


class TierProbs:
    """Each tier's probabilities on a list of texts (columns in the cascade's label order),
    cached under ``run_dir/route`` by the model's content and the texts."""

    def __init__(self, run_dir: Path, labels: list[str], progress: bool) -> None:
        self.run = RunDir(run_dir)
        self.labels = labels
        self.progress = progress
        self._model_keys: dict[Path, str] = {}

    def get(
        self, model: BaseClassifier, model_dir: Path, texts: list[str], what: str
    ) -> np.ndarray:
        if model_dir not in self._model_keys:  # hash each model's files once
            self._model_keys[model_dir] = hash_dir(model_dir)
        key = hash_json({"model": self._model_keys[model_dir], "texts": hash_texts(texts)})
        file = self.run.route_probs(model_dir, what, key)
        if file.is_file():
            return np.load(file, allow_pickle=False)
        probs = predict_in_batches(model, texts, progress=self.progress, what=what)
        probs = align_probs(probs, model.labels, self.labels).astype(np.float32)
        write_npy(file, probs)
        return probs


def tier_facts(
    result: CandidateResult | None, evaluate: EvalConfig
) -> tuple[float | None, float | None]:
    """(cost per 1M queries, batch-1 p50 at 1 thread) from a candidate's saved result."""
    from smallfit.evaluate.candidate import per_1m_at

    if result is None:
        return None, None
    cost = None if result.cost is None else result.cost.per_1m_queries_usd
    if cost is None:  # measured before costs were recorded
        cost = per_1m_at(evaluate.machine_hour_usd, result.speed.throughput_per_s)
    return cost, result.speed.p50_ms(1)


def front_outputs(
    options: list[str],
    *,
    run_dir: Path,
    results: dict[str, CandidateResult],
    probs: TierProbs,
    texts: list[str],
    evaluate: EvalConfig,
) -> list[TierOutputs]:
    """Each front option's dev outputs (probabilities cached in the run like any tier's)."""
    out = []
    for name in options:
        model_dir = tier_dir(run_dir, name)
        model = load(model_dir)
        try:
            cost, p50 = tier_facts(results[name], evaluate)
            p = probs.get(model, model_dir, texts, "dev")
        finally:
            model.close()
        out.append(TierOutputs(name=name, probs=p, cost_per_1m_usd=cost, p50_ms=p50))
    return out
