"""The tiny tier: TF-IDF over word and char n-grams, then multinomial logistic regression.

Trains in seconds on thousands of texts; batch-1 prediction takes well under a millisecond.
Soft targets (teacher probabilities) are fitted exactly (:mod:`smallfit.models.logistic`).

On disk (no pickle anywhere): ``linear.json`` holds each feature block's vectorizer parameters
and vocabulary, ``linear.safetensors`` the idf vectors, the coefficient matrix, the intercepts and
which labels the regression saw. Inference recomputes the features from those with a
``CountVectorizer`` on the fixed vocabulary, so training and loading share one code path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from smallfit.errors import SmallfitError
from smallfit.models.base import BaseClassifier, Signals, normalise_rows, register_backend
from smallfit.models.logistic import UNSEEN_LOGIT, fit_logistic

__all__ = ["LinearClassifier"]

FEATURES_FILE = "linear.json"
WEIGHTS_FILE = "linear.safetensors"
_FORMAT = 1
# char n-grams seen in a single text are mostly noise and a third of the columns; prune them
# once there is enough data for document frequency to mean something.
_CHAR_MIN_DF_FROM = 500


@dataclass
class _Block:
    """One TF-IDF feature block (word or char_wb n-grams) with a fixed vocabulary."""

    name: str
    params: dict[str, Any]  # analyzer, ngram_range, lowercase, token_pattern: CountVectorizer's
    terms: list[str]
    idf: np.ndarray
    _vectorizer: CountVectorizer | None = field(default=None, repr=False)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Sublinear tf * idf, rows L2-normalised: what TfidfVectorizer(sublinear_tf=True) does."""
        if self._vectorizer is None:
            params = dict(self.params)
            params["ngram_range"] = tuple(params["ngram_range"])
            vectorizer = CountVectorizer(vocabulary=self.terms, dtype=np.float64, **params)
            vectorizer.transform([""])  # builds vocabulary_ once, so later calls only read it
            self._vectorizer = vectorizer
        counts = self._vectorizer.transform(list(texts)).tocsr()
        counts.data = (np.log(counts.data) + 1.0) * self.idf[counts.indices]
        # L2-normalise rows (sklearn's normalize() costs more in validation than in arithmetic)
        row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        norms = np.sqrt(np.bincount(row, weights=counts.data**2, minlength=counts.shape[0]))
        norms[norms == 0.0] = 1.0
        counts.data /= norms[row]
        return counts


def _vectorizer_params(analyzer: str, ngrams: tuple[int, int]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "analyzer": analyzer,
        "ngram_range": [int(ngrams[0]), int(ngrams[1])],
        "lowercase": True,
    }
    if analyzer == "word":
        params["token_pattern"] = r"(?u)\b\w\w+\b"
    return params


def _fit_block(
    name: str, params: dict[str, Any], texts: list[str], *, max_features: int, min_df: int
) -> _Block:
    tfidf = TfidfVectorizer(
        sublinear_tf=True,
        max_features=max_features,
        min_df=min_df,
        dtype=np.float64,
        **{**params, "ngram_range": tuple(params["ngram_range"])},
    )
    try:
        tfidf.fit(texts)
    except ValueError as exc:  # "empty vocabulary": no text has a single token
        raise SmallfitError(
            f"linear model: no {name} features in the training texts ({exc})"
        ) from exc
    vocab = tfidf.vocabulary_
    terms = [""] * len(vocab)
    for term, index in vocab.items():
        terms[index] = term
    return _Block(name=name, params=params, terms=terms, idf=np.asarray(tfidf.idf_, np.float64))


@register_backend("linear")
class LinearClassifier(BaseClassifier):
    """TF-IDF (word + char_wb n-grams, sublinear tf) and logistic regression."""

    def __init__(
        self,
        *,
        labels: list[str],
        blocks: list[_Block],
        coef: np.ndarray,
        intercept: np.ndarray,
        classes: np.ndarray,
        name: str = "linear",
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.labels = list(labels)
        self.name = name
        self.lineage = dict(lineage or {})
        self.blocks = blocks
        self.coef = np.ascontiguousarray(coef, dtype=np.float32)
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float32)
        self.classes = np.ascontiguousarray(classes, dtype=np.int64)
        # (features, rows) C-contiguous, sliced per block: sparse @ dense then copies nothing
        self._coef_t = np.ascontiguousarray(self.coef.T)
        self.bytes_on_disk = 0
        n_features = sum(len(block.terms) for block in blocks)
        if self.coef.shape[1] != n_features or self.coef.shape[0] != len(self.intercept):
            raise SmallfitError(
                f"linear model: coefficients {self.coef.shape} do not match {n_features} "
                f"features and {len(self.intercept)} intercepts"
            )
        binary = self.coef.shape[0] == 1 and len(self.classes) == 2
        if not binary and self.coef.shape[0] != len(self.classes):
            raise SmallfitError("linear model: one coefficient row per seen class expected")
        if len(self.classes) and (self.classes.min() < 0 or self.classes.max() >= len(labels)):
            raise SmallfitError("linear model: class indices outside the label list")

    # ---------------------------------------------------------------------------- training

    @classmethod
    def fit(
        cls,
        texts: list[str],
        targets: np.ndarray,
        *,
        labels: list[str],
        word_ngrams: tuple[int, int],
        char_ngrams: tuple[int, int] | None,
        max_features: int,
        C: float,
        soft_labels: bool,
        min_prob: float,
        seed: int,
        name: str = "linear",
        lineage: dict[str, Any] | None = None,
    ) -> LinearClassifier:
        """Fit on ``targets``, an (n, len(labels)) probability matrix (teacher or one-hot gold).

        Word n-grams in ``word_ngrams`` and, unless None, character n-grams within word
        boundaries in ``char_ngrams`` (each family capped at ``max_features``), then a logistic
        regression of inverse strength ``C`` (solver seeded with ``seed``) on the teacher's
        probabilities (``soft_labels``: each text weighted by each label's probability, those
        under ``min_prob`` dropped) or their argmax. The ``linear`` student config documents
        each choice and its default."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape != (len(texts), len(labels)):
            raise SmallfitError(
                f"linear model: targets must have shape ({len(texts)}, {len(labels)}) "
                f"(texts x labels), got {targets.shape}"
            )
        if not len(texts):
            raise SmallfitError("linear model: no training texts")
        if not np.all(np.isfinite(targets)) or (targets < 0).any():
            raise SmallfitError("linear model: targets must be finite, non-negative probabilities")
        texts = [str(text) for text in texts]

        blocks = [
            _fit_block(
                "word",
                _vectorizer_params("word", word_ngrams),
                texts,
                max_features=max_features,
                min_df=1,
            )
        ]
        if char_ngrams is not None:
            min_df = 2 if len(texts) >= _CHAR_MIN_DF_FROM else 1
            blocks.append(
                _fit_block(
                    "char",
                    _vectorizer_params("char_wb", char_ngrams),
                    texts,
                    max_features=max_features,
                    min_df=min_df,
                )
            )
        features = sp.hstack([block.transform(texts) for block in blocks], format="csr")

        regression = fit_logistic(
            features,
            targets,
            C=C,
            soft_labels=soft_labels,
            min_prob=min_prob,
            seed=seed,
            what="linear model",
        )

        mine: dict[str, Any] = {
            "base": "tfidf-logreg",
            "word_ngrams": list(word_ngrams),
            "char_ngrams": list(char_ngrams) if char_ngrams else None,
            **regression.lineage(
                C=C, soft_labels=soft_labels, min_prob=min_prob, seed=seed, texts=texts
            ),
            "features": int(features.shape[1]),
        }
        return cls(
            labels=labels,
            blocks=blocks,
            coef=regression.coef,
            intercept=regression.intercept,
            classes=regression.classes,
            name=name,
            lineage={**mine, **(lineage or {})},
        )

    # --------------------------------------------------------------------------- inference

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The (n, num_features) sparse TF-IDF matrix the regression reads."""
        return sp.hstack([block.transform(texts) for block in self.blocks], format="csr")

    def _seen_logits(self, texts: Sequence[str]) -> np.ndarray:
        """The regression's logits over the classes it saw, (n, len(self.classes)), float64."""
        logits = np.zeros((len(texts), self.coef.shape[0]), dtype=np.float64)
        offset = 0
        for block in self.blocks:
            tfidf = block.transform(texts).astype(np.float32)
            logits += tfidf @ self._coef_t[offset : offset + len(block.terms)]
            offset += len(block.terms)
        logits += self.intercept
        if logits.shape[1] == 1:  # binary regression: sigmoid(z) == softmax([0, z])
            logits = np.hstack([np.zeros_like(logits), logits])
        return logits

    def _probs(self, seen_logits: np.ndarray) -> np.ndarray:
        z = seen_logits - seen_logits.max(axis=1, keepdims=True)
        seen = np.exp(z)
        seen /= seen.sum(axis=1, keepdims=True)
        probs = np.zeros((len(seen_logits), len(self.labels)), dtype=np.float64)
        probs[:, self.classes] = seen  # labels never seen in training keep probability 0
        return normalise_rows(probs)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._probs(self._seen_logits(texts))

    @property
    def signals(self) -> frozenset[str]:
        return frozenset({"logits"})

    def outputs(self, texts: Sequence[str], *, need: frozenset[str] = frozenset()) -> Signals:
        """Probabilities and logits (a label never seen in training: ``UNSEEN_LOGIT``)."""
        self._check_signals(need)
        if len(texts) == 0:
            empty = np.zeros((0, len(self.labels)), dtype=np.float32)
            return Signals(probs=empty, logits=empty if "logits" in need else None)
        seen = self._seen_logits(texts)
        logits = None
        if "logits" in need:
            logits = np.full((len(texts), len(self.labels)), UNSEEN_LOGIT, dtype=np.float32)
            logits[:, self.classes] = seen
        return Signals(probs=self._probs(seen), logits=logits)

    @property
    def num_parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)

    # --------------------------------------------------------------------------- storage

    def save_files(self, path: Path) -> dict[str, Any]:
        tensors = {f"{block.name}.idf": block.idf for block in self.blocks}
        tensors.update(coef=self.coef, intercept=self.intercept, classes=self.classes)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path / WEIGHTS_FILE)
        spec = {
            "format": _FORMAT,
            "blocks": [
                {"name": block.name, "params": block.params, "vocabulary": block.terms}
                for block in self.blocks
            ],
        }
        with open(path / FEATURES_FILE, "w", encoding="utf-8") as handle:
            json.dump(spec, handle, ensure_ascii=False, separators=(",", ":"))
        return {"files": [FEATURES_FILE, WEIGHTS_FILE], "features": self.coef.shape[1]}

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> LinearClassifier:
        try:
            spec = json.loads((path / FEATURES_FILE).read_text(encoding="utf-8"))
            tensors = load_file(path / WEIGHTS_FILE)
        except FileNotFoundError as exc:
            raise SmallfitError(
                f"{path}: incomplete linear model ({exc.filename} missing)"
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise SmallfitError(f"{path}: corrupt linear model files ({exc})") from exc
        except Exception as exc:  # safetensors raises its own error type on a bad header
            raise SmallfitError(f"{path / WEIGHTS_FILE}: corrupt weights ({exc})") from exc
        if spec.get("format") != _FORMAT:
            raise SmallfitError(
                f"{path / FEATURES_FILE}: format {spec.get('format')!r}, this smallfit reads "
                f"{_FORMAT}"
            )
        try:
            blocks = [
                _Block(
                    name=entry["name"],
                    params=entry["params"],
                    terms=entry["vocabulary"],
                    idf=tensors[f"{entry['name']}.idf"].astype(np.float64),
                )
                for entry in spec["blocks"]
            ]
            coef, intercept, classes = tensors["coef"], tensors["intercept"], tensors["classes"]
        except KeyError as exc:
            raise SmallfitError(f"{path}: linear model files lack {exc}") from exc
        for block in blocks:
            if len(block.terms) != len(block.idf):
                raise SmallfitError(f"{path}: {block.name} vocabulary and idf sizes differ")
        return cls(
            labels=list(manifest["labels"]),
            blocks=blocks,
            coef=coef,
            intercept=intercept,
            classes=classes,
            name=manifest.get("name", "linear"),
            lineage=manifest.get("lineage", {}),
        )
