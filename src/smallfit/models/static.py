"""The static tier: a fixed vector per vocabulary token, a text the normalised sum of its tokens'
vectors, then a softmax head.

The vectors are distilled once from an encoder (:mod:`smallfit.distill.static`): each token
alone through the encoder, reduced by PCA, scaled down where the token is frequent. Inference is
the encoder's own ``tokenizers`` tokenizer, one gather, one sum and one small matrix product in
numpy: no torch, no attention, so a text costs tens of microseconds.

On disk (no pickle): ``tokenizer.json`` (the encoder's, unchanged) and ``static.safetensors``
holding ``vectors`` (vocabulary x dims, float16, token weights folded in), ``coef`` (labels x
dims) and ``intercept``; the manifest holds the softmax temperature fitted on dev.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from smallfit.errors import SmallfitError
from smallfit.models.base import BaseClassifier, Signals, register_backend

__all__ = ["StaticClassifier"]

WEIGHTS_FILE = "static.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def _tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception type on a bad file
        raise SmallfitError(f"{path}: not a readable tokenizer.json ({exc})") from exc
    return tokenizer


@register_backend("static")
class StaticClassifier(BaseClassifier):
    """Static token vectors (summed, L2-normalised) and a linear softmax head."""

    def __init__(
        self,
        *,
        labels: list[str],
        tokenizer: Any,
        vectors: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        name: str = "static",
        lineage: dict[str, Any] | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.labels = list(labels)
        self.temperature = float(temperature)
        self.name = name
        self.lineage = dict(lineage or {})
        self.tokenizer = tokenizer
        tokenizer.no_padding()  # a text is its own tokens, however long
        tokenizer.no_truncation()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.coef = np.ascontiguousarray(coef, dtype=np.float32)
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float32)
        self._coef_t = np.ascontiguousarray(self.coef.T)
        if self.coef.shape != (len(self.labels), self.vectors.shape[1]):
            raise SmallfitError(
                f"static model: head {self.coef.shape} does not match {len(self.labels)} labels "
                f"x {self.vectors.shape[1]} dims"
            )
        if self.intercept.shape != (len(self.labels),):
            raise SmallfitError(
                f"static model: {self.intercept.shape} intercepts, one per label "
                f"({len(self.labels)}) expected"
            )
        if tokenizer.get_vocab_size() > len(self.vectors):
            raise SmallfitError(
                f"static model: the tokenizer has {tokenizer.get_vocab_size()} tokens, the table "
                f"{len(self.vectors)} vectors"
            )

    # --------------------------------------------------------------------------- inference

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids (no special tokens: they would add the same vector to all)."""
        if len(texts) == 1:  # batch 1: skip the batch call's thread hand-off
            return [self.tokenizer.encode(str(texts[0]), add_special_tokens=False).ids]
        rows = self.tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
        return [row.ids for row in rows]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The (n, dims) L2-normalised sums of each text's token vectors (zeros: no tokens)."""
        ids = self.token_ids(texts)
        out = np.zeros((len(ids), self.vectors.shape[1]), dtype=np.float32)
        if len(ids) == 1:
            if ids[0]:
                out[0] = self.vectors[ids[0]].sum(axis=0)
        else:
            lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
            filled = lengths > 0
            if filled.any():
                flat = np.fromiter(
                    (t for row in ids for t in row), dtype=np.int64, count=int(lengths.sum())
                )
                starts = np.concatenate([[0], np.cumsum(lengths[filled])[:-1]])
                out[filled] = np.add.reduceat(self.vectors[flat], starts, axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0.0] = 1.0
        return out / norms

    def _logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self._coef_t + self.intercept

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.outputs(texts).probs

    @property
    def signals(self) -> frozenset[str]:
        return frozenset({"logits", "embeddings"})

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        self._check_signals(need)
        embeddings = self.embed(texts)
        return self._from_logits(
            self._logits(embeddings),
            need,
            embeddings if "embeddings" in need else None,
        )

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray | None:
        return np.array([len(row) for row in self.token_ids(texts)], dtype=np.int64)

    @property
    def num_parameters(self) -> int:
        return int(self.vectors.size + self.coef.size + self.intercept.size)

    # --------------------------------------------------------------------------- storage

    def save_files(self, path: Path) -> dict[str, Any]:
        self.tokenizer.save(str(path / TOKENIZER_FILE))
        tensors = {
            "vectors": self.vectors.astype(np.float16),
            "coef": self.coef,
            "intercept": self.intercept,
        }
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path / WEIGHTS_FILE)
        return {
            "files": [TOKENIZER_FILE, WEIGHTS_FILE],
            "vocabulary": int(self.vectors.shape[0]),
            "dims": int(self.vectors.shape[1]),
            "temperature": self.temperature,
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> StaticClassifier:
        for file in (TOKENIZER_FILE, WEIGHTS_FILE):
            if not (path / file).is_file():
                raise SmallfitError(f"{path}: incomplete static model ({file} missing)")
        try:
            tensors = load_file(path / WEIGHTS_FILE)
        except Exception as exc:  # safetensors raises its own error type on a bad header
            raise SmallfitError(f"{path / WEIGHTS_FILE}: corrupt weights ({exc})") from exc
        try:
            vectors, coef, intercept = tensors["vectors"], tensors["coef"], tensors["intercept"]
        except KeyError as exc:
            raise SmallfitError(f"{path / WEIGHTS_FILE}: lacks the tensor {exc}") from exc
        try:
            return cls(
                labels=list(manifest["labels"]),
                tokenizer=_tokenizer(path / TOKENIZER_FILE),
                vectors=vectors,
                coef=coef,
                intercept=intercept,
                name=manifest.get("name", "static"),
                lineage=manifest.get("lineage", {}),
                temperature=float(manifest.get("temperature", 1.0)),
            )
        except SmallfitError as exc:
            raise SmallfitError(f"{path / WEIGHTS_FILE}: {exc}") from exc
