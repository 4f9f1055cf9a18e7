"""What the report says, read from a run directory's saved results only (results.json,
cascade.json, stages.json, labels/ledger.jsonl, results/*.test_probs.npy, results/test.jsonl):
checked field by field, so a missing or corrupt file is an error that names it and no page is
written half-way."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.config import FitConfig, format_validation_error
from smallfit.data import NO_GOLD
from smallfit.errors import SmallfitError
from smallfit.evaluate.candidate import per_1m_at
from smallfit.llm.prompt import DEFAULT_INSTRUCTION
from smallfit.report.config import ReportConfig
from smallfit.report.cost import CostOption
from smallfit.report.traffic import Traffic, read_traffic
from smallfit.run.layout import ONE_OFF_STAGES, TEACHER
from smallfit.run.records import (
    CandidateResult,
    CascadeSummary,
    RunResults,
    SelectionRecord,
    resolve_metric,
)
from smallfit.run.store import Run
from smallfit.select import pareto_front, vs_teacher

CHARS_PER_TOKEN = 4.0


@dataclass
class Confusion:
    gold: str
    predicted: str
    count: int
    examples: list[str]


@dataclass
class Facts:
    """Everything the page and the model cards show, already checked."""

    run_dir: Path
    store: Run
    results: RunResults
    candidates: list[CandidateResult]
    config: FitConfig
    report: ReportConfig
    metric: str
    chosen: str | None
    selection: SelectionRecord | None
    front: list[str]
    teacher: CandidateResult | None
    cascade: CascadeSummary | None
    labels: list[str]
    cost_options: list[CostOption]
    one_off: dict[str, float]
    api_basis: str
    confusions: list[Confusion] = field(default_factory=list)
    confusion_note: str | None = None
    confusion_against: str = "gold"
    """What the confused pairs compare with: ``gold``, or ``teacher`` when no test text has a
    gold label."""
    notes: list[str] = field(default_factory=list)
    traffic: Traffic | None = None
    """Served traffic, from ``smallfit report --from-log``."""

    @property
    def cascade_measure(self) -> str:
        """What a cascade point's ``accuracy`` is: accuracy, or an extract task's micro F1."""
        return "micro F1" if self.config.task == "extract" else "accuracy"

    def candidate(self, name: str | None) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == name), None)

    @property
    def hour_usd(self) -> float:
        if self.report.hour_usd is not None:
            return self.report.hour_usd
        return self.config.evaluate.machine_hour_usd


def load_facts(
    run_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    traffic_log: str | Path | None = None,
) -> Facts:
    """Read and check everything the report needs from ``run_dir``; ``overrides`` replace
    fields of the run's ``report`` config; ``traffic_log`` adds what served traffic did."""
    run = Path(run_dir)
    if not run.is_dir():
        raise SmallfitError(f"{run}: no such run directory")
    store = Run(run)
    file = store.dir.results_file
    records = store.read_results()
    if not records.candidates:
        raise SmallfitError(f"{file}: no candidates to report on")
    for c in records.candidates:
        if not c.speed.threads:
            raise SmallfitError(f"{file}: candidate '{c.name}': field 'speed.threads' is empty")
    candidates = records.candidates
    config = _config(records, file)
    if overrides:
        from pydantic import ValidationError

        try:
            report = ReportConfig.model_validate({**config.report.model_dump(), **overrides})
        except ValidationError as exc:
            raise SmallfitError(format_validation_error(exc, source="report options")) from exc
        config = config.model_copy(update={"report": report})
    metric = (
        records.selection.metric
        if records.selection
        else resolve_metric(config.select.metric, candidates)
    )
    selection = records.selection
    chosen = None if selection is None else selection.chosen
    cascade = records.cascade
    if cascade is not None and cascade.test is None:
        raise SmallfitError(f"{file}: cascade: missing field 'test' (its check on test)")
    teacher = next((c for c in candidates if c.name == TEACHER), None)
    labels = _labels(store, candidates)
    facts = Facts(
        run_dir=run,
        store=store,
        results=records,
        candidates=candidates,
        config=config,
        report=config.report,
        metric=metric,
        chosen=chosen,
        selection=selection,
        front=pareto_front(candidates, metric=metric),
        teacher=teacher,
        cascade=cascade,
        labels=labels,
        cost_options=[],
        one_off={},
        api_basis="",
    )
    if traffic_log is not None:
        facts.traffic = read_traffic(traffic_log)
    facts.one_off = _one_off(store, facts)
    facts.cost_options, facts.api_basis = _cost_options(facts)
    _confusions(facts)
    return facts


def _config(results: RunResults, file: Path) -> FitConfig:
    if results.config is None:
        raise SmallfitError(f"{file}: missing field 'config' (the run's configuration)")
    from pydantic import ValidationError

    try:
        return FitConfig.model_validate(results.config)
    except ValidationError as exc:
        raise SmallfitError(
            format_validation_error(exc, source=f"{file} (field 'config')")
        ) from exc


def _labels(store: Run, candidates: list[CandidateResult]) -> list[str]:
    data = store.read_data()
    if data is not None:
        return data.labels
    return sorted(candidates[0].quality.per_class)


# -- cost ----------------------------------------------------------------------------------------


def per_1m(c: CandidateResult, hour_usd: float) -> float | None:
    """A candidate's dollars per million queries: its own figure (an API's tokens at its
    prices, a cascade's weighted tiers), else this machine's hour at its batched throughput."""
    own = None if c.cost is None else c.cost.per_1m_queries_usd
    if own is not None:
        return float(own)
    return per_1m_at(hour_usd, c.speed.throughput_per_s)


def _one_off(store: Run, facts: Facts) -> dict[str, float]:
    """One-off dollars: machine time of the teacher, labelling, training and compression stages
    (stages.json) at the hourly price, plus an API teacher's labelling spend."""
    out = {"machine_seconds": 0.0, "machine_usd": 0.0, "labelling_api_usd": 0.0}
    stages = store.read_stages()
    if stages is not None:
        for name, entry in stages.items():
            if name.startswith(ONE_OFF_STAGES):
                out["machine_seconds"] += float(entry.seconds)
    else:
        missing = store.dir.stages_file.name
        facts.notes.append(f"{missing} is missing: one-off machine time counted as 0")
    out["machine_usd"] = out["machine_seconds"] / 3600.0 * facts.hour_usd
    teacher = facts.teacher
    if teacher is not None and teacher.speed.remote:
        spent = _api_ledger_usd(store.dir.answers_file)
        if spent is None:  # estimate: its cost per query over the texts it labelled
            data = store.read_data()
            rows = 0 if data is None else data.train + data.dev
            spent = (per_1m(teacher, facts.hour_usd) or 0.0) / 1e6 * rows
        out["labelling_api_usd"] = spent
    out["total_usd"] = out["machine_usd"] + out["labelling_api_usd"]
    return out


def _api_ledger_usd(path: Path) -> float | None:
    """Dollars spent on every request in an API teacher's ledger (labelling and its test
    answers, retries included), read-only; None without a ledger."""
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (total,) = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM requests").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SmallfitError(f"{path}: unreadable ledger ({exc})") from exc
    return float(total)


def estimated_prompt_tokens(labels: list[str], text_tokens: float) -> tuple[float, float]:
    """Prompt and completion tokens of one query to an API LLM with smallfit's default prompt
    (about 4 characters a token): the instruction, the label list and the text."""
    listed = "\n".join(labels)
    prompt_chars = len(DEFAULT_INSTRUCTION.replace("{labels}", listed).replace("{text}", ""))
    completion = max(len(x) for x in labels) / CHARS_PER_TOKEN + 6  # {"label": "..."}
    return prompt_chars / CHARS_PER_TOKEN + text_tokens, completion


def _cost_options(facts: Facts) -> tuple[list[CostOption], str]:
    r, hour = facts.report, facts.hour_usd
    common = {"hour_usd": hour, "utilization": r.utilization, "amortize_months": r.amortize_months}
    options: list[CostOption] = []
    teacher = facts.teacher
    api_teacher = teacher is not None and teacher.speed.remote
    if teacher is not None and api_teacher:
        per_q = (per_1m(teacher, hour) or 0.0) / 1e6
        basis = "measured tokens at its prices" if teacher.cost is None else teacher.cost.basis
        options.append(CostOption("API teacher", "api", per_query_usd=per_q, basis=basis))
    else:
        tokens = [
            float(c.roofline.tokens_per_query)
            for c in facts.candidates
            if c.roofline is not None and c.roofline.tokens_per_query
        ]
        text_tokens = float(np.median(tokens)) if tokens else 20.0
        pt, ct = estimated_prompt_tokens(facts.labels, text_tokens)
        per_q = (pt * r.api_input_per_1m_usd + ct * r.api_output_per_1m_usd) / 1e6
        basis = (
            f"reference API LLM: ${r.api_input_per_1m_usd}/1M prompt and "
            f"${r.api_output_per_1m_usd}/1M completion tokens (report.api_*), about "
            f"{pt:,.0f} prompt + {ct:,.0f} completion tokens a query (smallfit's default prompt "
            f"with {len(facts.labels)} labels, ~4 characters a token: an estimate)"
        )
        options.append(CostOption("API LLM (reference)", "api", per_query_usd=per_q, basis=basis))
        if teacher is not None and teacher.speed.throughput_per_s:
            options.append(
                CostOption(
                    "self-hosted teacher",
                    "self-hosted",
                    throughput_per_s=teacher.speed.throughput_per_s,
                    one_off_usd=_teacher_one_off(facts),
                    basis="the teacher on machines like this one",
                    **common,
                )
            )
    chosen = facts.candidate(facts.chosen)
    if chosen is not None and chosen.name != TEACHER and chosen.speed.throughput_per_s:
        options.append(
            CostOption(
                f"{chosen.name} (chosen)",
                "self-hosted",
                throughput_per_s=chosen.speed.throughput_per_s,
                one_off_usd=facts.one_off["total_usd"],
                basis="the chosen model on machines like this one",
                **common,
            )
        )
    cascade = facts.candidate("cascade")
    summary = facts.cascade
    if cascade is not None and summary is not None and summary.test is not None:
        escalation = float(summary.test.escalation)
        remote_last = api_teacher and summary.tiers[-1] == TEACHER
        first = facts.candidate(summary.tiers[0])
        if remote_last and first is not None:  # local tiers on machines, escalations paid per query
            options.append(
                CostOption(
                    "cascade",
                    "cascade",
                    per_query_usd=escalation * options[0].per_query_usd,
                    throughput_per_s=first.speed.throughput_per_s,
                    one_off_usd=facts.one_off["total_usd"],
                    basis=f"{first.name} on machines, {escalation:.1%} of queries sent to "
                    "the API teacher",
                    **common,
                )
            )
        elif cascade.speed.throughput_per_s:
            options.append(
                CostOption(
                    "cascade",
                    "cascade",
                    throughput_per_s=cascade.speed.throughput_per_s,
                    one_off_usd=facts.one_off["total_usd"],
                    basis=f"every tier on machines like this one ({escalation:.1%} of queries "
                    "reach the teacher)",
                    **common,
                )
            )
    return options, options[0].basis


def _teacher_one_off(facts: Facts) -> float:
    """A fine-tuned teacher's own training time at the hourly price."""
    training = (facts.teacher.lineage.get("training") if facts.teacher else None) or {}
    return float(training.get("seconds") or 0.0) / 3600.0 * facts.hour_usd


# -- where the chosen model is weaker -----------------------------------------------------------


def _confusions(facts: Facts) -> None:
    """The chosen model's most confused (gold, predicted) pairs on test, with example texts,
    from its saved test probabilities and the run's saved test split."""
    name = facts.chosen
    k = facts.report.confused_pairs
    if name is None or k == 0 or facts.config.task == "extract":  # fields: no label pairs
        return
    store = facts.store
    probs, split = store.read_test_probs(name), store.read_test_split()
    if probs is None or split is None:
        missing = store.dir.test_probs(name) if probs is None else store.dir.test_split
        facts.confusion_note = f"no confusion pairs: {missing} is missing (written by fit)"
        return
    texts, gold = split
    probs_file = store.dir.test_probs(name)
    model_labels = _model_labels(facts, name)
    if probs.ndim != 2 or probs.shape != (len(texts), len(model_labels)):
        raise SmallfitError(
            f"{probs_file}: shape {probs.shape} does not match {len(texts)} test rows x "
            f"{len(model_labels)} labels"
        )
    predicted = [model_labels[i] for i in probs.argmax(axis=1)]
    if not any(g != NO_GOLD for g in gold):
        # no gold at all: against the teacher's answers, when it saved them
        teacher = store.read_test_probs(TEACHER) if name != TEACHER else None
        if teacher is None or teacher.shape[0] != len(texts):
            facts.confusion_note = "no confusion pairs: no gold labels and no teacher answers"
            return
        own = _model_labels(facts, TEACHER)
        gold = [own[i] for i in teacher.argmax(axis=1)]
        facts.confusion_against = "teacher"
    counts: dict[tuple[str, str], list[int]] = {}
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if g != p and g != NO_GOLD:
            counts.setdefault((g, p), []).append(i)
    top = sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:k]
    facts.confusions = [
        Confusion(g, p, len(rows), [texts[i] for i in rows[: facts.report.examples_per_pair]])
        for (g, p), rows in top
    ]


def _model_labels(facts: Facts, name: str) -> list[str]:
    """The label order of a model's saved probabilities (its manifest; else the run's)."""
    return facts.store.model_labels(name) or facts.labels


def ratios(facts: Facts, c: CandidateResult) -> dict[str, float | None]:
    """x faster, x smaller and % of the teacher's quality (None without a teacher)."""
    return vs_teacher(c, facts.teacher, metric=facts.metric)
