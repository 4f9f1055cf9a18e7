"""An LLM behind an OpenAI-compatible API as a Classifier (backend ``llm``).

The API half (endpoint, prompt, prices, limits, the answer store, speed and cost from the
ledger) is :class:`~smallfit.models.llm_api.ApiModel`'s. A text whose answer is unparseable (or
could not be had) gets a uniform row, and the text is kept in ``unanswered_texts``: the
evaluation counts those rows wrong rather than trusting an argmax over equal values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.llm.client import Endpoint
from smallfit.llm.prompt import Prompt
from smallfit.models.base import BaseClassifier, register_backend
from smallfit.models.llm_api import ApiModel, api_arguments


@register_backend("llm")
class LLMClassifier(ApiModel, BaseClassifier):
    """Classifies by asking an LLM; probabilities as ``prompt.probabilities`` says."""

    prompt: Prompt

    def __init__(self, endpoint: Endpoint, prompt: Prompt, **options: Any) -> None:
        """``options``: :class:`~smallfit.models.llm_api.ApiModel`'s."""
        super().__init__(endpoint, prompt, **options)
        self.labels = list(prompt.labels)
        self.unanswered_texts: set[str] = set()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        answers, report = self.labelled(texts, progress=False)
        if report.stopped:
            raise self.stopped_error(report, self.name)
        out = np.full((len(texts), len(self.labels)), 1.0 / len(self.labels), dtype=np.float32)
        for i, answer in enumerate(answers):
            if answer is None or answer.probs is None:
                self.unanswered_texts.add(texts[i])
            else:
                self.unanswered_texts.discard(texts[i])
                out[i] = answer.probs
        return out

    def unanswered(self, texts: Sequence[str]) -> np.ndarray | None:
        return np.array([t in self.unanswered_texts for t in texts], dtype=bool)

    def label_texts(self, texts: list[str], *, progress: bool) -> np.ndarray | None:
        """Through the labeller (cached per text, resumable, budgeted): NaN rows for texts
        with no answer; a budget stop raises, every answer so far kept."""
        answers, report = self.labelled(
            texts, progress=progress, desc="teacher (LLM) labelling", spread=True
        )
        if report.stopped:
            raise self.stopped_error(report, "teacher labelling")
        probs = np.full((len(texts), len(self.labels)), np.nan, dtype=np.float32)
        for i, answer in enumerate(answers):
            if answer is not None and answer.probs is not None:
                probs[i] = answer.probs
        return probs

    def save_files(self, path: Path) -> dict[str, Any]:
        return {
            **self.api_manifest(),
            "probabilities": PROBABILITY_METHODS[self.prompt.probabilities],
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> LLMClassifier:
        model = cls(**api_arguments(path, manifest, Prompt.from_dict))
        model._home = path.resolve()
        return model


PROBABILITY_METHODS = {
    "logprobs": "token logprobs: the label's own tokens, plus the alternatives each answer token "
    "lists, given to the labels they begin; unreached mass spread over the rest",
    "samples": "vote share over several answers sampled at temperature 1",
    "argmax": "one-hot on the single answer (no confidence information)",
}
