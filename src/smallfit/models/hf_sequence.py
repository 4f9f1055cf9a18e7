"""A HF ``AutoModelForSequenceClassification`` directory as a Classifier.

This is how a user brings the classifier they already run as the teacher: any HF directory
whose ``config.json`` names its labels in ``id2label``. Saved with ``save_pretrained`` plus the
manifest; no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from smallfit.errors import SmallfitError
from smallfit.models.base import BaseClassifier, normalise_rows, register_backend


@register_backend("hf-sequence")
class HFSequenceClassifier(BaseClassifier):
    """Wraps a transformers sequence-classification model and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_length: int = 128,
        lineage: dict[str, Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.name = name
        self.max_length = max_length
        self.lineage = dict(lineage or {})
        self.batch_size = batch_size
        self.bytes_on_disk = 0

    @classmethod
    def from_directory(cls, path: str | Path, *, name: str | None = None) -> HFSequenceClassifier:
        """Load a HF classifier directory; its ``id2label`` must name real labels."""
        directory = Path(path)
        try:
            config = AutoConfig.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise SmallfitError(f"{directory}: not a HF model directory ({exc})") from exc
        id2label = getattr(config, "id2label", None) or {}
        if not id2label or all(str(v).startswith("LABEL_") for v in id2label.values()):
            raise SmallfitError(
                f"{directory}/config.json: 'id2label' must name the labels "
                "(found none, or only LABEL_0, LABEL_1, ...)"
            )
        model = AutoModelForSequenceClassification.from_pretrained(str(directory))
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        return cls(
            model,
            tokenizer,
            name=name or directory.name,
            lineage={"base": str(directory), "source": "user HF classifier"},
        )

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out[idx] = torch.softmax(self.model(**enc).logits.float(), dim=-1).numpy()
        return normalise_rows(out)

    def save_files(self, path: Path) -> dict[str, Any]:
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        return {"max_length": self.max_length}

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> HFSequenceClassifier:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(
            model,
            tokenizer,
            name=manifest.get("name", path.name),
            max_length=int(manifest.get("max_length", 128)),
            lineage=manifest.get("lineage", {}),
        )
