"""Out-of-scope scores: how in-scope a query looks to one tier, higher = more in scope. The
abstaining tier of a cascade abstains where its score falls below a threshold calibrated on
in-scope dev queries (:func:`smallfit.route.calibration.abstain_threshold`).

One name, one registered class: the cascade, the route stage and the server ask a score for
what it needs (:attr:`Score.needs`: logits, embeddings), fit it on the tier's training signals
when it keeps reference statistics (:attr:`Score.fitted`), save those as tensors beside the
cascade (``abstain.safetensors``, no pickle) and call it on the tier's
:class:`~smallfit.models.base.Signals`; none of them branches on a score's name.

- ``max_prob``, ``margin``, ``entropy``: the tier's probabilities (:func:`confidence_scores`).
- ``energy``: ``T * logsumexp(logits / T)`` at the tier's own temperature (the negative free
  energy of Liu et al. 2020): large logits everywhere mean a familiar input even when two
  labels share the probability.
- ``knn``: cosine similarity to the ``k``-th nearest training embedding (Sun et al. 2022).
- ``mahalanobis``: minus the Mahalanobis distance to the nearest class mean of the training
  embeddings, with one shared (Ledoit-Wolf shrunk) covariance (Lee et al. 2018; Podolskiy et al.
  2021 for intents).
- ``relative_mahalanobis``: the same, less the distance to the training embeddings as a whole
  (Ren et al. 2021), which discounts what is merely unusual text rather than an unknown intent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.models.base import Signals

CONFIDENCES: tuple[str, ...] = ("max_prob", "margin", "entropy")
CHUNK = 1024
"""Query rows scored at once against the reference (bounds a kNN score's memory)."""


def confidence_scores(probs: np.ndarray, measure: str) -> np.ndarray:
    """How sure each row of ``probs`` is, in [0, 1], higher = surer: the top probability
    (``max_prob``), top-1 minus top-2 (``margin``) or 1 - entropy / log(k) (``entropy``)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise SmallfitError(f"confidence needs (n, k >= 2) probabilities, got shape {p.shape}")
    if measure == "max_prob":
        return p.max(axis=1)
    if measure == "margin":
        top2 = np.partition(p, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if measure == "entropy":
        logs = np.log(np.clip(p, 1e-12, 1.0))
        return 1.0 + (p * logs).sum(axis=1) / np.log(p.shape[1])
    raise SmallfitError(f"unknown confidence measure {measure!r} (known: {', '.join(CONFIDENCES)})")


class Score(ABC):
    """One out-of-scope score. Subclasses set :attr:`needs` and :attr:`fitted`, implement
    :meth:`__call__`, and, when fitted, :meth:`fit`, :meth:`state` and :meth:`load_state`."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    """Signals beyond probabilities the tier must give (``logits``, ``embeddings``)."""
    fitted: ClassVar[bool] = False
    """Whether the score keeps statistics of the tier's training signals (see :meth:`fit`)."""

    def fit(self, train: Signals, labels: np.ndarray) -> Score:
        """Keep what the score compares with: the tier's signals on its in-scope training texts
        and their label indices. Returns self."""
        return self

    @abstractmethod
    def __call__(self, signals: Signals) -> np.ndarray:
        """How in-scope each row looks, float64, higher = more in scope."""

    def state(self) -> dict[str, np.ndarray]:
        """The fitted statistics, as named arrays (saved with safetensors)."""
        return {}

    def load_state(self, tensors: dict[str, np.ndarray]) -> Score:
        """Restore :meth:`state`; returns self."""
        return self

    def _need(self, signals: Signals, what: str) -> np.ndarray:
        value = getattr(signals, what)
        if value is None:
            raise SmallfitError(f"the {self.name} score needs the tier's {what}; none were given")
        return np.asarray(value, dtype=np.float64)

    def _check_fitted(self, ready: bool) -> None:
        if not ready:
            raise SmallfitError(f"the {self.name} score was never fitted on training signals")


S = TypeVar("S", bound=type[Score])
_SCORES: dict[str, type[Score]] = {}


def register_score(name: str) -> Callable[[S], S]:
    """Class decorator: make the score selectable as ``route.abstain.score: name``."""

    def decorate(cls: S) -> S:
        cls.name = name
        _SCORES[name] = cls
        return cls

    return decorate


def score_names() -> list[str]:
    """Every registered score, in registration order."""
    return list(_SCORES)


AUTO = "auto"
"""The default ``route.abstain.score``: the first of :data:`AUTO_ORDER` the tier gives."""
AUTO_ORDER: tuple[str, ...] = ("knn", "max_prob")
"""``auto``'s preference. On held-out intents (``benchmarks/out_of_scope_holdout.py``) ``knn``
caught more than ``max_prob`` at 5% in-scope loss on each of Banking77, Bitext and SNIPS, and
was the only score at or near the top on all three: relative Mahalanobis led on Bitext and fell
under chance on SNIPS (a far-off held-out intent), Mahalanobis trailed ``max_prob`` on
Banking77. ``max_prob`` needs only probabilities."""


def resolve_score(name: str, gives: frozenset[str]) -> str:
    """``name``, or for ``auto`` the first score of :data:`AUTO_ORDER` whose needs ``gives``
    (the abstaining tier's signals) meets."""
    if name != AUTO:
        return name
    return next(n for n in AUTO_ORDER if score_class(n).needs <= gives)


def score_class(name: str) -> type[Score]:
    if name not in _SCORES:
        raise SmallfitError(
            f"unknown out-of-scope score {name!r} (known: {', '.join(score_names())})"
        )
    return _SCORES[name]


def make_score(name: str) -> Score:
    """A fresh (unfitted) score by name."""
    return score_class(name)()


class _Confidence(Score):
    def __call__(self, signals: Signals) -> np.ndarray:
        return confidence_scores(signals.probs, self.name)


@register_score("max_prob")
class MaxProb(_Confidence):
    """The top probability: the cascade's original abstention rule."""


@register_score("margin")
class Margin(_Confidence):
    """Top-1 minus top-2 probability."""


@register_score("entropy")
class Entropy(_Confidence):
    """1 - entropy / log(k)."""


@register_score("energy")
class Energy(Score):
    """``T * logsumexp(logits / T)`` at the tier's temperature."""

    needs = frozenset({"logits"})

    def __call__(self, signals: Signals) -> np.ndarray:
        t = float(signals.temperature)
        z = self._need(signals, "logits") / t
        top = z.max(axis=1)
        return t * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@register_score("knn")
class NearestNeighbours(Score):
    """Cosine similarity to the ``k``-th nearest training embedding (k = 10: robust to a stray
    or mislabelled training text, still inside one intent's ~100 examples)."""

    needs = frozenset({"embeddings"})
    fitted = True
    k = 10

    def __init__(self) -> None:
        self.reference: np.ndarray | None = None

    def fit(self, train: Signals, labels: np.ndarray) -> NearestNeighbours:
        # kept at the precision it is saved in, so the run scores as the saved cascade does
        unit = _unit(self._need(train, "embeddings")).astype(np.float16)
        self.reference = unit.astype(np.float32)
        return self

    def __call__(self, signals: Signals) -> np.ndarray:
        self._check_fitted(self.reference is not None)
        ref = self.reference
        assert ref is not None
        q = _unit(self._need(signals, "embeddings")).astype(np.float32)
        k = min(self.k, len(ref))
        out = np.zeros(len(q), dtype=np.float64)
        for start in range(0, len(q), CHUNK):
            sims = q[start : start + CHUNK] @ ref.T
            out[start : start + CHUNK] = np.partition(sims, -k, axis=1)[:, -k]
        return out

    def state(self) -> dict[str, np.ndarray]:
        assert self.reference is not None
        return {"reference": self.reference.astype(np.float16)}

    def load_state(self, tensors: dict[str, np.ndarray]) -> NearestNeighbours:
        self.reference = np.asarray(tensors["reference"], dtype=np.float32)
        return self


def _precision(centered: np.ndarray) -> np.ndarray:
    from sklearn.covariance import LedoitWolf

    return np.asarray(LedoitWolf(assume_centered=True).fit(centered).precision_, np.float64)


def _nearest_distance(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` to its nearest row of ``means``."""
    xp = x @ precision
    own = (xp * x).sum(axis=1)
    cross = xp @ means.T
    centre = ((means @ precision) * means).sum(axis=1)
    return np.maximum(own[:, None] - 2 * cross + centre[None, :], 0.0).min(axis=1)


@register_score("mahalanobis")
class Mahalanobis(Score):
    """Minus the squared Mahalanobis distance to the nearest class mean (shared covariance)."""

    needs = frozenset({"embeddings"})
    fitted = True

    def __init__(self) -> None:
        self.means: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def fit(self, train: Signals, labels: np.ndarray) -> Mahalanobis:
        x = self._need(train, "embeddings")
        labels = np.asarray(labels)
        classes = np.unique(labels[labels >= 0])
        if len(classes) < 2:
            raise SmallfitError(f"the {self.name} score needs training texts of 2+ labels")
        self.means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        keep = labels >= 0
        centered = x[keep] - self.means[np.searchsorted(classes, labels[keep])]
        self.precision = _precision(centered)
        self.means = self.means.astype(np.float32).astype(np.float64)  # as saved (see state)
        return self

    def __call__(self, signals: Signals) -> np.ndarray:
        self._check_fitted(self.means is not None and self.precision is not None)
        x = self._need(signals, "embeddings")
        return -_nearest_distance(x, self.means, self.precision)  # type: ignore[arg-type]

    def state(self) -> dict[str, np.ndarray]:
        assert self.means is not None and self.precision is not None
        return {"means": self.means.astype(np.float32), "precision": self.precision}

    def load_state(self, tensors: dict[str, np.ndarray]) -> Mahalanobis:
        self.means = np.asarray(tensors["means"], dtype=np.float64)
        self.precision = np.asarray(tensors["precision"], dtype=np.float64)
        return self


@register_score("relative_mahalanobis")
class RelativeMahalanobis(Mahalanobis):
    """The Mahalanobis score plus the distance to the training embeddings as one Gaussian."""

    def __init__(self) -> None:
        super().__init__()
        self.centre: np.ndarray | None = None
        self.background: np.ndarray | None = None

    def fit(self, train: Signals, labels: np.ndarray) -> RelativeMahalanobis:
        super().fit(train, labels)
        x = self._need(train, "embeddings")
        self.centre = x.mean(axis=0, keepdims=True)
        self.background = _precision(x - self.centre)
        return self

    def __call__(self, signals: Signals) -> np.ndarray:
        self._check_fitted(self.centre is not None and self.background is not None)
        x = self._need(signals, "embeddings")
        return super().__call__(signals) + _nearest_distance(
            x,
            self.centre,  # type: ignore[arg-type]
            self.background,  # type: ignore[arg-type]
        )

    def state(self) -> dict[str, np.ndarray]:
        assert self.centre is not None and self.background is not None
        return super().state() | {"centre": self.centre, "background": self.background}

    def load_state(self, tensors: dict[str, np.ndarray]) -> RelativeMahalanobis:
        super().load_state(tensors)
        self.centre = np.asarray(tensors["centre"], dtype=np.float64)
        self.background = np.asarray(tensors["background"], dtype=np.float64)
        return self
