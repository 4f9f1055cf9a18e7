"""``Cascade``: tiers cheapest first; a tier answers when it is sure enough, else the query goes
on; the last tier always answers. A cascade is a Classifier like any other model.

Routing is one small pure function, :meth:`Cascade.step`, shared by the batch path here
(:meth:`Cascade.decide`) and by the server, which calls the tiers through its own batchers.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.models.base import (
    BaseClassifier,
    align_probs,
    dir_bytes,
    load,
    register_backend,
)

Confidence = Literal["max_prob", "margin", "entropy"]
CONFIDENCES: tuple[str, ...] = ("max_prob", "margin", "entropy")


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


@dataclass(frozen=True)
class Tier:
    """One tier: its model, and the confidence it needs to answer (None for the last tier)."""

    model: BaseClassifier
    threshold: float | None
    path: Path | None = None

    @property
    def remote(self) -> bool:
        return bool(getattr(self.model, "remote", False))


@dataclass(frozen=True)
class Abstain:
    """Tier ``tier`` answers ``label`` instead when its confidence is below ``threshold``."""

    label: str
    threshold: float
    tier: int


@dataclass(frozen=True)
class Step:
    """What one tier decided for the rows it saw: answer, abstain, or (neither) pass on."""

    confidence: np.ndarray
    answer: np.ndarray
    abstain: np.ndarray


@dataclass
class Decisions:
    """A cascade's answers: probabilities over ``Cascade.labels``, the tier that answered
    (``-1`` where it abstained), its confidence, which rows fell back to a local answer
    because a later tier failed or timed out, and the last tier each row was sent to."""

    probs: np.ndarray
    tier: np.ndarray
    confidence: np.ndarray
    abstained: np.ndarray
    fallback: np.ndarray
    reached: np.ndarray


@register_backend("cascade")
class Cascade(BaseClassifier):
    """Tiers ordered cheapest first, routed by confidence; see :meth:`step`."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        confidence: Confidence = "max_prob",
        abstain: Abstain | None = None,
        timeout_s: float | None = None,
        name: str = "cascade",
        lineage: dict[str, Any] | None = None,
    ) -> None:
        if len(tiers) < 1:
            raise SmallfitError("a cascade needs at least one tier")
        if confidence not in CONFIDENCES:
            raise SmallfitError(f"unknown confidence measure {confidence!r}")
        for i, tier in enumerate(tiers[:-1]):
            if tier.threshold is None:
                raise SmallfitError(f"tier {i} ({tier.model.name}) has no threshold")
        first = tiers[0].model.labels
        for tier in tiers[1:]:
            align_probs(np.zeros((0, len(tier.model.labels))), tier.model.labels, first)
        if abstain is not None and not 0 <= abstain.tier < len(tiers):
            raise SmallfitError(f"abstain tier {abstain.tier} is not one of the {len(tiers)} tiers")
        self.tiers = list(tiers)
        self.confidence = confidence
        self.abstain = abstain
        self.timeout_s = timeout_s
        self.name = name
        self.lineage = lineage or {}
        extra = [abstain.label] if abstain is not None and abstain.label not in first else []
        self.labels = [*first, *extra]

    # -- routing ----------------------------------------------------------------------------

    def tier_probs(self, index: int, probs: np.ndarray) -> np.ndarray:
        """Tier ``index``'s probabilities in the cascade's label order (abstain column zero)."""
        model = self.tiers[index].model
        aligned = align_probs(np.asarray(probs), model.labels, self.tiers[0].model.labels)
        if len(self.labels) > aligned.shape[1]:
            aligned = np.pad(aligned, ((0, 0), (0, len(self.labels) - aligned.shape[1])))
        return aligned.astype(np.float32, copy=False)

    def step(self, index: int, probs: np.ndarray) -> Step:
        """Route the rows tier ``index`` predicted: answer where its confidence clears its
        threshold (always at the last tier), abstain where the abstaining tier is below its
        abstain threshold, otherwise pass on to the next tier."""
        conf = confidence_scores(probs, self.confidence)
        abstain = np.zeros(len(conf), dtype=bool)
        if self.abstain is not None and self.abstain.tier == index:
            abstain = conf < self.abstain.threshold
        if index == len(self.tiers) - 1:
            answer = ~abstain
        else:
            answer = (conf >= self.tiers[index].threshold) & ~abstain  # type: ignore[operator]
        return Step(confidence=conf, answer=answer, abstain=abstain)

    def abstain_row(self) -> np.ndarray:
        """The probability row of an abstention: all mass on the abstain label."""
        row = np.zeros(len(self.labels), dtype=np.float32)
        if self.abstain is not None:
            row[self.labels.index(self.abstain.label)] = 1.0
        return row

    def walk(self, n: int) -> Generator[tuple[int, np.ndarray], np.ndarray, Decisions]:
        """The routing loop over ``n`` queries, driven by its caller: it yields (tier index,
        rows still open) and takes back that tier's probabilities for those rows, or, thrown
        in, the error the tier raised. A remote tier's error leaves the best local answer
        standing, flagged as a fallback; any other error propagates. Returns the Decisions.

        One loop for every way a cascade is run: :meth:`decide` (models called in turn),
        :meth:`decide_from` (saved probabilities) and the server (tiers behind batchers)."""
        out = Decisions(
            probs=np.zeros((n, len(self.labels)), dtype=np.float32),
            tier=np.full(n, -1, dtype=np.int64),
            confidence=np.zeros(n, dtype=np.float32),
            abstained=np.zeros(n, dtype=bool),
            fallback=np.zeros(n, dtype=bool),
            reached=np.zeros(n, dtype=np.int64),
        )
        open_rows = np.arange(n)
        best: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None
        for index, tier in enumerate(self.tiers):
            if len(open_rows) == 0:
                break
            out.reached[open_rows] = index
            try:
                raw = yield index, open_rows
            except Exception:
                if best is None or not tier.remote:
                    raise
                rows, probs, conf, at = best
                keep = np.isin(rows, open_rows)
                out.probs[rows[keep]] = probs[keep]
                out.confidence[rows[keep]] = conf[keep]
                out.tier[rows[keep]] = at
                out.fallback[rows[keep]] = True
                break
            probs = self.tier_probs(index, raw)
            step = self.step(index, raw)
            done = open_rows[step.answer]
            out.probs[done] = probs[step.answer]
            out.tier[done] = index
            out.confidence[done] = step.confidence[step.answer]
            gone = open_rows[step.abstain]
            out.probs[gone] = self.abstain_row()
            out.abstained[gone] = True
            out.confidence[gone] = step.confidence[step.abstain]
            if not tier.remote:
                best = (open_rows, probs, step.confidence, index)
            open_rows = open_rows[~step.answer & ~step.abstain]
        return out

    def decide(self, texts: Sequence[str]) -> Decisions:
        """Run the cascade over ``texts``, each tier on the rows still open."""
        return run_walk(
            self.walk(len(texts)),
            lambda index, rows: self._call(self.tiers[index], [texts[i] for i in rows]),
        )

    def decide_from(self, probs: Sequence[np.ndarray]) -> Decisions:
        """The cascade's decisions from each tier's saved probabilities (one array per tier,
        a row per query, columns in that tier's label order); no model is run."""
        return run_walk(self.walk(len(probs[0])), lambda index, rows: probs[index][rows])

    def _call(self, tier: Tier, texts: list[str]) -> np.ndarray:
        if self.timeout_s is None or not tier.remote:
            return tier.model.predict_proba(texts)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(tier.model.predict_proba, texts).result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise TimeoutError(
                f"tier {tier.model.name} gave no answer within {self.timeout_s:g}s"
            ) from exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.decide(texts).probs

    # -- Classifier plumbing ----------------------------------------------------------------

    @property
    def num_parameters(self) -> int:
        return sum(t.model.info.parameters for t in self.tiers)

    @property
    def bytes_on_disk(self) -> int:  # type: ignore[override]
        """A cascade's size is its tiers' (its own directory holds only the manifest)."""
        return sum(dir_bytes(t.path) if t.path else t.model.info.bytes_on_disk for t in self.tiers)

    @bytes_on_disk.setter
    def bytes_on_disk(self, value: int) -> None:
        pass  # load() sets every model's size from its directory; a cascade's is its tiers'

    def close(self) -> None:
        for tier in self.tiers:
            if hasattr(tier.model, "close"):
                tier.model.close()

    def save_files(self, path: Path) -> dict[str, Any]:
        tiers = []
        for tier in self.tiers:
            if tier.path is None:
                raise SmallfitError(
                    f"tier {tier.model.name} was never saved; save it first and load it from "
                    "its directory, so the cascade can refer to it"
                )
            tiers.append(
                {
                    "name": tier.model.name,
                    "path": os.path.relpath(tier.path.resolve(), path.resolve()),
                    "threshold": tier.threshold,
                }
            )
        abstain = None
        if self.abstain is not None:
            abstain = {
                "label": self.abstain.label,
                "threshold": self.abstain.threshold,
                "tier": self.abstain.tier,
            }
        return {
            "tiers": tiers,
            "confidence": self.confidence,
            "abstain": abstain,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def load_files(cls, path: Path, manifest: dict[str, Any]) -> Cascade:
        tiers = []
        for i, entry in enumerate(manifest.get("tiers") or []):
            where = (path / entry["path"]).resolve()
            if not where.is_dir():
                raise SmallfitError(
                    f"{path}/smallfit.json: tier {i} ({entry.get('name')}) points at {where}, "
                    "which does not exist (a cascade refers to its tiers by relative path: move "
                    "the run directory whole)"
                )
            tiers.append(Tier(model=load(where), threshold=entry["threshold"], path=where))
        abstain = manifest.get("abstain")
        return cls(
            tiers,
            confidence=manifest.get("confidence", "max_prob"),
            abstain=Abstain(**abstain) if abstain else None,
            timeout_s=manifest.get("timeout_s"),
            name=manifest.get("name", "cascade"),
            lineage=manifest.get("lineage") or {},
        )


def run_walk(
    walker: Generator[tuple[int, np.ndarray], np.ndarray, Decisions],
    probs_of: Callable[[int, np.ndarray], np.ndarray],
) -> Decisions:
    """Drive :meth:`Cascade.walk` with ``probs_of(tier index, rows)``; its Decisions."""
    try:
        index, rows = next(walker)
        while True:
            try:
                raw = probs_of(index, rows)
            except Exception as exc:
                index, rows = walker.throw(exc)
                continue
            index, rows = walker.send(raw)
    except StopIteration as stop:
        return stop.value


def load_tiers(paths: Sequence[str | Path]) -> list[Tier]:
    """Tiers (thresholds unset) from model directories, cheapest first."""
    return [Tier(model=load(p), threshold=None, path=Path(p).resolve()) for p in paths]
