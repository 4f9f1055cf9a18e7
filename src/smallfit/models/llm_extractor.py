"""An LLM behind an OpenAI-compatible API as an Extractor (kind ``llm-extractor``): the
teacher of an extract task when the big model is an LLM.

Each text is asked once, at temperature 0, under the fields' JSON schema (through the same
client, answer store, ledger and budgets as a classifying LLM). An answer that is not JSON, or
that breaks the schema, is counted (``invalid``, by reason) and has no fields; it is never
guessed at. Values are placed in the text with :func:`smallfit.fields.align`; a value the LLM
gave that is not in the text is kept (it is the LLM's answer) and counted in
``values_not_in_text``. An LLM states no confidence here: every answered field gets 1.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smallfit.fields import FieldSchema, align
from smallfit.llm.client import Endpoint
from smallfit.llm.field_prompt import FieldPrompt
from smallfit.llm.labeller import Answer
from smallfit.models.base import dir_bytes, read_manifest, write_json
from smallfit.models.extractor import BaseExtractor
from smallfit.models.llm_api import ApiModel, api_arguments
from smallfit.models.tagger import Extraction

KIND = "llm-extractor"


class LLMExtractor(ApiModel, BaseExtractor):
    """Extracts fields by asking an LLM for JSON."""

    kind = KIND
    prompt: FieldPrompt

    def __init__(self, endpoint: Endpoint, prompt: FieldPrompt, **options: Any) -> None:
        """``options``: :class:`~smallfit.models.llm_api.ApiModel`'s."""
        super().__init__(endpoint, prompt, **options)
        self.schema: FieldSchema = prompt.schema
        self.values_not_in_text = 0
        self.invalid: Counter[str] = Counter()
        """Answers that could not be read, by reason (``not-json``, ``off-schema``) or
        ``failed`` (no answer after retries)."""

    def extract(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: bool = False,
        spread: bool = False,
    ) -> list[Extraction]:
        """Each text's fields; a budget stop raises (every answer so far is kept).
        ``spread``: over the engine set by :meth:`use_engine` (teacher labelling)."""
        answers, report = self.labelled(
            texts, progress=progress, desc=f"{self.name} (LLM) extracting", spread=spread
        )
        if report.stopped:
            raise self.stopped_error(report, f"{self.name}: extracting")
        return [self._extraction(text, a) for text, a in zip(texts, answers, strict=True)]

    def label_texts(self, texts: Sequence[str], *, progress: bool) -> list[Extraction]:
        """Through the labeller, which has its own progress bar and cache."""
        return self.extract(texts, progress=progress, spread=True)

    def _extraction(self, text: str, answer: Answer | None) -> Extraction:
        if answer is None or answer.label is None:
            self.invalid["failed" if answer is None else answer.status] += 1
            return Extraction({}, [], {}, 0.0, valid=False)
        values = json.loads(answer.label)
        spans, missing = align(text, values)
        self.values_not_in_text += len(missing)
        return Extraction(values, spans, dict.fromkeys(values, 1.0), 1.0)

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "smallfit.json", self.manifest(metrics, **self.api_manifest()))
        self.bytes_on_disk = dir_bytes(out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> LLMExtractor:
        where = Path(path)
        model = cls(**api_arguments(where, read_manifest(where), FieldPrompt.from_dict))
        model._home = where.resolve()
        return model
