"""What one batch of texts becomes in a prediction file: one JSON object per text.

A classifier's row: ``label``, ``confidence``, the ``top_k`` ``probs``, the ``tier`` that
answered (a single model: its own name), and whether the cascade ``abstained`` (out of scope) or
fell back to a local answer because a remote tier failed (``fallback``). An extractor's row:
``fields`` as its schema renders them, ``field_confidence``, the document's ``confidence`` and the
``tier``. The local and the Ray engines both call :meth:`Answerer.answer`, so their files match
row for row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.models.base import read_manifest
from smallfit.models.loading import load_model
from smallfit.route.cascade import Cascade
from smallfit.run.store import resolve_model_path


@dataclass
class Answerer:
    """A saved model (a cascade, a classifier or an extractor), loaded on first use, and how
    many probabilities a classifier's row keeps."""

    path: Path
    top_k: int = 3

    @functools.cached_property
    def model(self) -> Any:
        return load_model(self.path)

    def ready(self) -> None:
        """Load the model now, so that a model that does not load fails before any output."""
        _ = self.model

    @property
    def task(self) -> str:
        return str(read_manifest(self.path).get("task", "classify"))

    def answer(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One row (without the input's line and id) per text, in order."""
        if self.task == "extract":
            return self._fields(texts)
        return self._labels(texts)

    def _labels(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        cascade = Cascade.of(self.model, path=self.path)
        decisions = cascade.decide(list(texts))
        labels = cascade.labels
        k = min(self.top_k, len(labels))
        rows = []
        for i, reached in enumerate(decisions.reached.tolist()):
            confidence = round(float(decisions.confidence[i]), 6)
            if decisions.abstained[i]:
                label = cascade.abstain.label  # type: ignore[union-attr]
                probs = {label: 1.0}
                tier = cascade.tiers[reached].model.name
            else:
                p = decisions.probs[i]
                top = np.argsort(-p, kind="stable")[:k]
                label = labels[int(top[0])]
                probs = {labels[int(j)]: round(float(p[j]), 6) for j in top}
                tier = cascade.tiers[int(decisions.tier[i])].model.name
            rows.append(
                {
                    "label": label,
                    "confidence": confidence,
                    "probs": probs,
                    "tier": tier,
                    "abstained": bool(decisions.abstained[i]),
                    "fallback": bool(decisions.fallback[i]),
                }
            )
        return rows

    def _fields(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        schema = self.model.schema
        return [
            {
                "fields": schema.render(a.values),
                "field_confidence": {k: round(v, 6) for k, v in a.field_confidence.items()},
                "confidence": round(a.confidence, 6),
                "tier": a.tier or self.model.name,
                "valid": a.valid,
            }
            for a in self.model.extract(list(texts))
        ]


def load_answerer(model_or_run: str | Path, *, top_k: int = 3) -> Answerer:
    """The model in a model directory, or a run's cascade (else its chosen model)."""
    path = resolve_model_path(model_or_run).resolve()
    read_manifest(path)  # a clear error now for a directory that holds no model
    return Answerer(path=path, top_k=top_k)
