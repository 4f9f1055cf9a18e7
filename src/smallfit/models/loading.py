"""Loading any saved smallfit model, whatever its task (what ``smallfit.load`` is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.models.base import load as load_classifier
from smallfit.models.base import read_manifest
from smallfit.models.extractor import load_extractor


def load_model(path: str | Path) -> Any:
    """A Classifier, or an Extractor (a model whose manifest says ``"task": "extract"``)."""
    if read_manifest(path).get("task") == "extract":
        return load_extractor(path)
    return load_classifier(path)


load = load_model
"""``smallfit.load(path)``: the model saved in ``path``, a classifier or a field extractor."""
