"""The abstaining tier's out-of-scope scores, for the route stage: the tier's signals (logits,
embeddings) on dev, test, the out-of-scope test texts and, for scores fitted on it, the training
pool, cached under ``run_dir/route``; every registered score the tier allows fitted and computed
(:mod:`smallfit.route.oos` turns them into curves); the configured one returned, fitted, for the
cascade to save and use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smallfit.errors import SmallfitError
from smallfit.hashing import hash_dir, hash_json, hash_texts
from smallfit.models.base import BaseClassifier, Signals, write_npy
from smallfit.route.oos import evaluate_scores
from smallfit.route.scores import Score, make_score, resolve_score, score_names
from smallfit.run.layout import RunDir

BATCH = 64
"""Texts per model call (as the evaluation's predictions are batched)."""
SPLITS = ("dev", "test", "oos")


@dataclass(frozen=True)
class Scored:
    """The configured score, fitted, with its values on each split; the abstaining tier's test
    signals (its own label order: a replay of the cascade needs them); and the evaluation of
    every score (for ``cascade.json``)."""

    score: Score
    values: dict[str, np.ndarray]
    test_signals: Signals
    evaluation: dict[str, Any]


class SignalCache:
    """A model's logits and embeddings on a list of texts, cached by the model's files, the
    texts and the signal."""

    def __init__(self, run: RunDir, progress: bool) -> None:
        self.run = run
        self.progress = progress
        self._keys: dict[Path, str] = {}

    def get(
        self,
        model: BaseClassifier,
        model_dir: Path,
        texts: Sequence[str],
        what: str,
        need: set[str],
    ) -> dict[str, np.ndarray]:
        if model_dir not in self._keys:
            self._keys[model_dir] = hash_dir(model_dir)
        key = hash_json({"model": self._keys[model_dir], "texts": hash_texts(list(texts))})
        files = {s: self.run.route_signal(model_dir, what, key, s) for s in need}
        missing = {s for s, f in files.items() if not f.is_file()}
        if missing:
            got = self._compute(model, texts, frozenset(missing), what)
            for signal in missing:
                write_npy(files[signal], got[signal])
        return {s: np.load(f, allow_pickle=False) for s, f in files.items()}

    def _compute(
        self, model: BaseClassifier, texts: Sequence[str], need: frozenset[str], what: str
    ) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {s: [] for s in need}
        desc = f"{model.name}: {what} {', '.join(sorted(need))}"
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not self.progress) as bar:
            for start in range(0, len(texts), BATCH):
                out = model.outputs(list(texts[start : start + BATCH]), need=need)
                for signal in need:
                    parts[signal].append(np.asarray(getattr(out, signal), np.float32))
                bar.update(len(out))
        return {s: np.concatenate(p) for s, p in parts.items()}


def score_tier(
    *,
    cache: SignalCache,
    model: BaseClassifier,
    model_dir: Path,
    probs: Mapping[str, np.ndarray],
    texts: Mapping[str, Sequence[str]],
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    chosen: str,
    log: Callable[[str], None] = print,
) -> Scored:
    """Every score ``model`` allows on dev, in-scope test and the out-of-scope texts (``probs``
    and ``texts`` keyed by those splits; probabilities in the model's own label order), fitted
    on ``train_texts`` (label indices ``train_labels``) where a score keeps statistics.
    ``chosen`` (``route.abstain.score``; ``auto`` resolved by what the tier gives) must be one
    of them. Without out-of-scope texts there
    is nothing to compare: only ``chosen`` is computed."""
    gives = model.signals
    chosen = resolve_score(chosen, gives)
    scores: dict[str, Score] = {}
    why: dict[str, str] = {}
    for name in score_names():
        score = make_score(name)
        if score.needs <= gives:
            scores[name] = score
        else:
            missing = ", ".join(sorted(score.needs - gives))
            why[name] = f"{model.name} ({model.kind}) gives no {missing}"
    if not len(texts["oos"]):  # nothing to compare scores on: only the one in use
        scores = {n: v for n, v in scores.items() if n == chosen}
        why = {n: v for n, v in why.items() if n == chosen}
    if chosen in why:
        raise SmallfitError(
            f"route.abstain.score {chosen} needs what the abstaining tier cannot give: "
            f"{why[chosen]}; choose one of {', '.join(scores)}"
        )
    need = set().union(*(s.needs for s in scores.values()))
    signals = {}
    for split in SPLITS:
        wanted = need if need and len(texts[split]) else set()
        extra = cache.get(model, model_dir, texts[split], split, wanted) if wanted else {}
        signals[split] = Signals(
            probs=probs[split],
            logits=extra.get("logits"),
            embeddings=extra.get("embeddings"),
            temperature=model.temperature,
        )
    fitted = [s for s in scores.values() if s.fitted]
    if fitted:
        train_need = set().union(*(s.needs for s in fitted))
        log(f"[route] fitting {', '.join(s.name for s in fitted)} on {model.name}'s training pool")
        extra = cache.get(model, model_dir, train_texts, "train", train_need)
        train = Signals(
            probs=np.zeros((len(train_texts), len(model.labels)), np.float32),
            logits=extra.get("logits"),
            embeddings=extra.get("embeddings"),
            temperature=model.temperature,
        )
        for score in fitted:
            score.fit(train, np.asarray(train_labels))
    values = {
        name: [score(signals[s]) if len(texts[s]) else np.zeros(0) for s in SPLITS]
        for name, score in scores.items()
    }
    evaluation = evaluate_scores(
        {**{n: (v[0], v[1], v[2]) for n, v in values.items()}, **why}, chosen=chosen
    )
    return Scored(
        score=scores[chosen],
        values=dict(zip(SPLITS, values[chosen], strict=True)),
        test_signals=signals["test"],
        evaluation=evaluation,
    )
