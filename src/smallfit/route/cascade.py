"""``Cascade``: tiers cheapest first; a tier answers when it is sure enough, else the query goes
on; the last tier always answers. A cascade is a Classifier like any other model.

Routing is one small pure function, :meth:`Cascade.step`, shared by the batch path here
(:meth:`Cascade.decide`) and by the server, which calls the tiers through its own batchers.
Every driver calls tier ``i`` through :meth:`Cascade.tier_call`, which asks the abstaining tier
for the signals its out-of-scope score needs (:mod:`smallfit.route.scores`).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.models.base import (
    BaseClassifier,
    Signals,
    align_probs,
    dir_bytes,
    load,
    register_backend,
)
from smallfit.route.scores import (
    CONFIDENCES,
    MaxProb,
    Score,
    confidence_scores,
    make_score,
)

Confidence = Literal["max_prob", "margin", "entropy"]
ABSTAIN_FILE = "abstain.safetensors"
"""The abstaining score's fitted statistics, beside the cascade's manifest."""
Raw = np.ndarray | Signals
"""What a tier call returns: probabilities, or Signals when the abstaining score needs more."""


@dataclass(frozen=True)
class Tier:
    """One tier: its model, and the confidence it needs to answer (None for the last tier)."""

    model: BaseClassifier
    threshold: float | None
    path: Path | None = None

    @property
    def remote(self) -> bool:
        return self.model.remote


@dataclass(frozen=True)
class Abstain:
    """Tier ``tier`` answers ``label`` instead when its out-of-scope ``score`` (higher: more in
    scope) is below ``threshold``."""

    label: str
    threshold: float
    tier: int
    score: Score = field(default_factory=MaxProb)


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


@dataclass(frozen=True)
class RowAnswer:
    """One text's answer from a cascade's decisions, as the server and ``predict`` give it."""

    label: str
    probs: dict[str, float]
    """The ``top_k`` most probable labels (rounded to 6 places); the abstain label alone, at 1."""
    confidence: float
    tier: int
    """The tier that answered; for an abstention, the last tier the text reached."""
    abstained: bool
    fallback: bool


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
        if abstain is not None and abstain.score.needs:
            model = tiers[abstain.tier].model
            missing = sorted(abstain.score.needs - model.signals)
            if missing:
                raise SmallfitError(
                    f"the {abstain.score.name} out-of-scope score needs {', '.join(missing)}, "
                    f"which tier {abstain.tier} ({model.name}, {model.kind}) does not give; "
                    "choose another route.abstain.score (max_prob works with every tier)"
                )
        self.tiers = list(tiers)
        self.confidence = confidence
        self.abstain = abstain
        self.timeout_s = timeout_s
        self.name = name
        self.lineage = lineage or {}
        extra = [abstain.label] if abstain is not None and abstain.label not in first else []
        self.labels = [*first, *extra]

    @classmethod
    def of(cls, model: BaseClassifier, *, path: Path) -> Cascade:
        """``model`` as a cascade: itself when it is one, else a cascade of one tier (what
        serving routes every model through)."""
        if isinstance(model, Cascade):
            return model
        return cls([Tier(model=model, threshold=None, path=path)], name=model.name)

    # -- routing ----------------------------------------------------------------------------

    def needs(self, index: int) -> frozenset[str]:
        """The signals beyond probabilities tier ``index`` must give (its abstaining score's)."""
        if self.abstain is not None and self.abstain.tier == index:
            return self.abstain.score.needs
        return frozenset()

    def tier_call(self, index: int) -> Callable[[Sequence[str]], Raw]:
        """How every driver calls tier ``index`` on texts: its probabilities, or its Signals
        when the abstaining score needs more than probabilities."""
        model = self.tiers[index].model
        need = self.needs(index)
        if not need:
            return model.predict_proba
        return lambda texts: model.outputs(texts, need=need)

    def tier_probs(self, index: int, probs: Raw) -> np.ndarray:
        """Tier ``index``'s probabilities in the cascade's label order (abstain column zero)."""
        model = self.tiers[index].model
        raw = Signals.of(probs).probs
        aligned = align_probs(np.asarray(raw), model.labels, self.tiers[0].model.labels)
        if len(self.labels) > aligned.shape[1]:
            aligned = np.pad(aligned, ((0, 0), (0, len(self.labels) - aligned.shape[1])))
        return aligned.astype(np.float32, copy=False)

    def step(self, index: int, raw: Raw) -> Step:
        """Route the rows tier ``index`` predicted: answer where its confidence clears its
        threshold (always at the last tier), abstain where the abstaining tier's out-of-scope
        score is below its abstain threshold, otherwise pass on to the next tier."""
        signals = Signals.of(raw)
        conf = confidence_scores(signals.probs, self.confidence)
        abstain = np.zeros(len(conf), dtype=bool)
        if self.abstain is not None and self.abstain.tier == index:
            abstain = self.abstain.score(signals) < self.abstain.threshold
        if index == len(self.tiers) - 1:
            answer = ~abstain
        else:
            answer = (conf >= self.tiers[index].threshold) & ~abstain
        return Step(confidence=conf, answer=answer, abstain=abstain)

    def abstain_row(self) -> np.ndarray:
        """The probability row of an abstention: all mass on the abstain label."""
        row = np.zeros(len(self.labels), dtype=np.float32)
        if self.abstain is not None:
            row[self.labels.index(self.abstain.label)] = 1.0
        return row

    def walk(self, n: int) -> Generator[tuple[int, np.ndarray], Raw, Decisions]:
        """The routing loop over ``n`` queries, driven by its caller: it yields (tier index,
        rows still open) and takes back what :meth:`tier_call` gave for those rows
        (probabilities, or Signals), or, thrown in, the error the tier raised. A remote tier's
        error leaves the best local answer standing, flagged as a fallback; any other error
        propagates. Returns the Decisions.

        One loop for every way a cascade is run: :meth:`decide` (models called in turn),
        :meth:`decide_from` (saved outputs) and the server (tiers behind batchers)."""
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
            lambda index, rows: self._call(index, [texts[i] for i in rows]),
        )

    def answers(self, decisions: Decisions, top_k: int) -> list[RowAnswer]:
        """Each row of ``decisions`` as its answer: label, top-``top_k`` probabilities,
        confidence and tier."""
        k = min(top_k, len(self.labels))
        out = []
        for row, reached in enumerate(decisions.reached.tolist()):
            confidence = round(float(decisions.confidence[row]), 6)
            if decisions.abstained[row]:
                label = self.abstain.label  # type: ignore[union-attr]
                out.append(RowAnswer(label, {label: 1.0}, confidence, reached, True, False))
                continue
            p = decisions.probs[row]
            top = np.argsort(-p, kind="stable")[:k]
            probs = {self.labels[int(i)]: round(float(p[i]), 6) for i in top}
            label, tier = self.labels[int(top[0])], int(decisions.tier[row])
            out.append(
                RowAnswer(label, probs, confidence, tier, False, bool(decisions.fallback[row]))
            )
        return out

    def decide_from(self, probs: Sequence[Raw]) -> Decisions:
        """The cascade's decisions from each tier's saved outputs (one per tier, a row per
        query: probabilities with columns in that tier's label order, or Signals holding what
        the abstaining score needs); no model is run."""
        return run_walk(self.walk(len(probs[0])), lambda index, rows: probs[index][rows])

    def _call(self, index: int, texts: list[str]) -> Raw:
        tier, call = self.tiers[index], self.tier_call(index)
        if self.timeout_s is None or not tier.remote:
            return call(texts)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(call, texts).result(timeout=self.timeout_s)
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
    def bytes_on_disk(self) -> int:
        """A cascade's size is its tiers' and its abstaining score's statistics (its own
        directory holds only those and the manifest)."""
        tiers = sum(dir_bytes(t.path) if t.path else t.model.info.bytes_on_disk for t in self.tiers)
        state = self.abstain.score.state() if self.abstain and self.abstain.score.fitted else {}
        return tiers + sum(int(a.nbytes) for a in state.values())

    @bytes_on_disk.setter
    def bytes_on_disk(self, value: int) -> None:
        pass  # load() sets every model's size from its directory; a cascade's is its tiers'

    def close(self) -> None:
        for tier in self.tiers:
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
        (path / ABSTAIN_FILE).unlink(missing_ok=True)  # a former calibration's statistics
        if self.abstain is not None:
            score = self.abstain.score
            state = score.state()
            if state:
                from safetensors.numpy import save_file

                arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
                save_file(arrays, str(path / ABSTAIN_FILE))
            abstain = {
                "label": self.abstain.label,
                "threshold": self.abstain.threshold,
                "tier": self.abstain.tier,
                "score": score.name,
                "state": ABSTAIN_FILE if state else None,
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
        confidence = manifest.get("confidence", "max_prob")
        return cls(
            tiers,
            confidence=confidence,
            abstain=_load_abstain(path, manifest.get("abstain"), confidence),
            timeout_s=manifest.get("timeout_s"),
            name=manifest.get("name", "cascade"),
            lineage=manifest.get("lineage") or {},
        )


def _load_abstain(path: Path, entry: dict[str, Any] | None, confidence: str) -> Abstain | None:
    """The abstention of a saved cascade; one saved before scores were selectable abstained on
    its routing confidence."""
    if not entry:
        return None
    score = make_score(entry.get("score") or confidence)
    if entry.get("state"):
        from safetensors.numpy import load_file

        file = path / entry["state"]
        if not file.is_file():
            raise SmallfitError(f"{path}/smallfit.json: the abstaining score's {file} is missing")
        try:
            score.load_state(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error type on a bad header
            raise SmallfitError(f"{file}: corrupt out-of-scope statistics ({exc})") from exc
    elif score.fitted:
        raise SmallfitError(f"{path}/smallfit.json: the {score.name} score has no statistics")
    return Abstain(
        label=entry["label"],
        threshold=float(entry["threshold"]),
        tier=int(entry["tier"]),
        score=score,
    )


def run_walk(
    walker: Generator[tuple[int, np.ndarray], Raw, Decisions],
    probs_of: Callable[[int, np.ndarray], Raw],
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
