"""The Extractor: a model of an ``extract`` task (text -> fields), beside the Classifier.

Backends: ``tagger`` (an encoder token tagger in PyTorch) and ``tagger-onnx`` (the same in ONNX
Runtime). Their manifests say ``"task": "extract"``; :func:`smallfit.models.base.load_model`
loads either kind of model.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallfit.engine.config import EngineConfig
from smallfit.errors import SmallfitError
from smallfit.fields import FieldSchema
from smallfit.models.base import MANIFEST_FORMAT, ModelInfo, model_info, read_manifest

if TYPE_CHECKING:
    from smallfit.models.tagger import Extraction

EXTRACTORS = {
    "tagger": "smallfit.models.tagger:TokenTagger",
    "tagger-onnx": "smallfit.models.tagger_onnx:OnnxTagger",
    "field-cascade": "smallfit.models.field_cascade:FieldCascade",
    "gguf-extractor": "smallfit.models.gguf_extractor:GgufExtractor",
    "llm-extractor": "smallfit.models.llm_extractor:LLMExtractor",
}


LABEL_CHUNK = 256


class BaseExtractor(ABC):
    """What every extractor shares: its schema, name, lineage and size, and ``answer`` (what
    speed measurement calls)."""

    kind: str = ""
    task = "extract"
    remote = False
    schema: FieldSchema
    name: str
    lineage: dict[str, Any]
    bytes_on_disk: int = 0

    @abstractmethod
    def extract(self, texts: Sequence[str], *, batch_size: int = 64) -> list[Extraction]:
        """The fields of each text."""

    @property
    @abstractmethod
    def num_parameters(self) -> int: ...

    @abstractmethod
    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        """Write the model and its manifest into directory ``path``; returns the path."""

    @abstractmethod
    def set_num_threads(self, threads: int) -> None: ...

    def use_engine(self, engine: EngineConfig) -> None:
        """Where the model's bulk labelling runs; nothing here (an API model's requests can
        spread over Ray)."""
        return None  # a neutral default, not an abstract method

    def answer(self, texts: Sequence[str]) -> list[Extraction]:
        return self.extract(texts)

    def label_texts(self, texts: Sequence[str], *, progress: bool) -> list[Extraction]:
        """The teacher's answers on a training pool, with a progress bar."""
        from tqdm.auto import tqdm

        out: list[Extraction] = []
        with tqdm(
            total=len(texts), desc="teacher labelling", unit="text", disable=not progress
        ) as bar:
            for start in range(0, len(texts), LABEL_CHUNK):
                out += self.extract(texts[start : start + LABEL_CHUNK])
                bar.update(min(LABEL_CHUNK, len(texts) - start))
        return out

    @property
    def fields(self) -> list[str]:
        return list(self.schema.names)

    @property
    def labels(self) -> list[str]:
        """The field names (a manifest's ``labels``)."""
        return self.fields

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Nothing held open."""

    def measured_speed(self) -> dict[str, Any] | None:
        """Speed known without a probe (an API model's, from its ledger); None: probe it."""
        return None

    def measured_cost(self) -> dict[str, Any] | None:
        return None

    def manifest(self, metrics: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        """The manifest every extractor writes, with its backend's ``extra`` fields."""
        return {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "task": self.task,
            "name": self.name,
            "labels": self.fields,
            "schema": self.schema.to_dict(),
            **extra,
            "parameters": self.num_parameters,
            "lineage": self.lineage,
            "metrics": metrics or {},
        }

    @property
    def info(self) -> ModelInfo:
        return model_info(self)


def load_extractor(path: str | Path) -> BaseExtractor:
    """The extractor saved in ``path``."""
    kind = read_manifest(path)["kind"]
    if kind not in EXTRACTORS:
        raise SmallfitError(f"{path}: a '{kind}' model, not a field extractor")
    module, _, attr = EXTRACTORS[kind].partition(":")
    model: BaseExtractor = getattr(importlib.import_module(module), attr).load(path)
    return model
