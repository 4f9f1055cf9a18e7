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

    @functools.cached_property
    def task(self) -> str:
        """``classify``, or ``extract`` for a field extractor (read once, not per batch)."""
        return str(read_manifest(self.path).get("task", "classify"))

    def answer(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One row (without the input's line and id) per text, in order."""
        if self.task == "extract":
            return self._fields(texts)
        return self._labels(texts)

    def _labels(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        cascade = Cascade.of(self.model, path=self.path)
        return [
            {
                "label": a.label,
                "confidence": a.confidence,
                "probs": a.probs,
                "tier": cascade.tiers[a.tier].model.name,
                "abstained": a.abstained,
                "fallback": a.fallback,
            }
            for a in cascade.answers(cascade.decide(list(texts)), self.top_k)
        ]

    def _fields(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        schema, name = self.model.schema, self.model.name
        return [
            {**a.as_json(schema, a.tier or name), "valid": a.valid}
            for a in self.model.extract(list(texts))
        ]


def load_answerer(model_or_run: str | Path, *, top_k: int = 3) -> Answerer:
    """The model in a model directory, or a run's cascade (else its chosen model)."""
    path = resolve_model_path(model_or_run).resolve()
    read_manifest(path)  # a clear error now for a directory that holds no model
    return Answerer(path=path, top_k=top_k)
