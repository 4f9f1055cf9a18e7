"""Batch prediction: a saved model or a run's cascade over a file, streamed in bounded memory,
resumable (``smallfit predict``)."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "Answerer": "smallfit.predict.answers",
    "load_answerer": "smallfit.predict.answers",
    "PredictSummary": "smallfit.predict.file",
    "predict_file": "smallfit.predict.file",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["Answerer", "PredictSummary", "load_answerer", "predict_file"]
