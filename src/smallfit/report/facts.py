"""What the report says, read from a run directory's saved results only (results.json,
cascade.json, stages.json, labels/ledger.jsonl, results/*.test_probs.npy, results/test.jsonl):
checked field by field, so a missing or corrupt file is an error that names it and no page is
written half-way."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.config import DEFAULT_INSTRUCTION, FitConfig, ReportConfig, format_validation_error
from smallfit.errors import SmallfitError
from smallfit.evaluate.candidate import per_1m_at
from smallfit.evaluate.results import read_results
from smallfit.evaluate.speed import batched_throughput
from smallfit.models.base import MANIFEST
from smallfit.report.cost import CostOption
from smallfit.run.layout import ONE_OFF_STAGES, TEACHER, RunDir
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
    results: dict[str, Any]
    candidates: list[dict[str, Any]]
    config: FitConfig
    report: ReportConfig
    metric: str
    chosen: str | None
    selection: dict[str, Any]
    front: list[str]
    teacher: dict[str, Any] | None
    cascade: dict[str, Any] | None
    labels: list[str]
    cost_options: list[CostOption]
    one_off: dict[str, float]
    api_basis: str
    confusions: list[Confusion] = field(default_factory=list)
    confusion_note: str | None = None
    notes: list[str] = field(default_factory=list)

    def candidate(self, name: str | None) -> dict[str, Any] | None:
        return next((c for c in self.candidates if c["name"] == name), None)

    @property
    def hour_usd(self) -> float:
        if self.report.hour_usd is not None:
            return self.report.hour_usd
        return self.config.evaluate.machine_hour_usd


def _need(obj: Any, path: str, where: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    """``obj[a][b]...`` for ``path`` 'a.b', or a SmallfitError naming ``where`` and the field."""
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SmallfitError(f"{where}: missing field '{path}'")
        value = value[part]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SmallfitError(f"{where}: field '{path}' is {value!r}, not a {_kind_name(kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SmallfitError(f"{where}: field '{path}' is {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("number" if k in (int, float) else k.__name__ for k in kinds)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"{path}: corrupt JSON ({exc})") from exc


def check_candidate(c: Any, index: int, file: Path) -> None:
    """The fields every candidate must have for the page; a clear error otherwise."""
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        raise SmallfitError(f"{file}: candidates[{index}] has no name")
    where = f"{file}: candidate '{c['name']}'"
    _need(c, "quality.accuracy", where)
    _need(c, "speed.threads", where, dict)
    if not c["speed"]["threads"]:
        raise SmallfitError(f"{where}: field 'speed.threads' is empty")
    for n, row in c["speed"]["threads"].items():
        _need(row, "p50_ms", f"{where} speed.threads.{n}")
    if not (c.get("speed") or {}).get("remote"):
        _need(c, "bytes_on_disk", where, int)
    _check_intervals(c, where)


def _check_intervals(c: dict[str, Any], where: str) -> None:
    """95% intervals are optional (older runs have none); when present, each is ``[lo, hi]``
    and each paired difference ``{"diff", "ci95": [lo, hi]}``."""
    q = c["quality"]
    for key in ("ci95", "vs_teacher"):
        if q.get(key) is not None and not isinstance(q[key], dict):
            raise SmallfitError(f"{where}: field 'quality.{key}' is {q[key]!r}, not an object")
    for name, ci in (q.get("ci95") or {}).items():
        if ci is not None:
            _need_interval(ci, f"quality.ci95.{name}", where)
    for name, paired in (q.get("vs_teacher") or {}).items():
        if paired is not None:
            _need(c, f"quality.vs_teacher.{name}.diff", where)
            _need_interval(paired.get("ci95"), f"quality.vs_teacher.{name}.ci95", where)


def _need_interval(value: Any, path: str, where: str) -> None:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] <= value[1]
    )
    if not ok:
        raise SmallfitError(f"{where}: field '{path}' is {value!r}, not a [low, high] interval")


def load_facts(run_dir: str | Path, *, overrides: dict[str, Any] | None = None) -> Facts:
    """Read and check everything the report needs from ``run_dir``; ``overrides`` replace
    fields of the run's ``report`` config."""
    run = Path(run_dir)
    if not run.is_dir():
        raise SmallfitError(f"{run}: no such run directory")
    file = RunDir(run).results_file
    results = read_results(run)
    for i, c in enumerate(results["candidates"]):
        check_candidate(c, i, file)
    candidates = results["candidates"]
    if not candidates:
        raise SmallfitError(f"{file}: no candidates to report on")
    config = _config(results, file)
    if overrides:
        from pydantic import ValidationError

        try:
            report = ReportConfig.model_validate({**config.report.model_dump(), **overrides})
        except ValidationError as exc:
            raise SmallfitError(format_validation_error(exc, source="report options")) from exc
        config = config.model_copy(update={"report": report})
    metric = (results.get("selection") or {}).get("metric") or config.select.metric
    for c in candidates:
        if metric not in c["quality"]:
            raise SmallfitError(f"{file}: candidate '{c['name']}' has no quality.{metric}")
    selection = results.get("selection") or {}
    if not isinstance(selection, dict):
        raise SmallfitError(f"{file}: field 'selection' is not an object")
    chosen = selection.get("chosen")
    names = [c["name"] for c in candidates]
    if chosen is not None and chosen not in names:
        raise SmallfitError(f"{file}: selection.chosen '{chosen}' is not among the candidates")
    cascade = _cascade(run, results)
    teacher = next((c for c in candidates if c["name"] == TEACHER), None)
    labels = _labels(run, candidates)
    facts = Facts(
        run_dir=run,
        results=results,
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
    facts.one_off = _one_off(run, facts)
    facts.cost_options, facts.api_basis = _cost_options(facts)
    _confusions(facts)
    return facts


def _config(results: dict[str, Any], file: Path) -> FitConfig:
    raw = results.get("config")
    if not isinstance(raw, dict):
        raise SmallfitError(f"{file}: missing field 'config' (the run's configuration)")
    from pydantic import ValidationError

    try:
        return FitConfig.model_validate(raw)
    except ValidationError as exc:
        raise SmallfitError(
            format_validation_error(exc, source=f"{file} (field 'config')")
        ) from exc


def _cascade(run: Path, results: dict[str, Any]) -> dict[str, Any] | None:
    cascade = results.get("cascade")
    if cascade is None:
        return None
    where = f"{RunDir(run).results_file}: cascade"
    _need(cascade, "tiers", where, list)
    _need(cascade, "curve", where, list)
    _need(cascade, "test.accuracy", where)
    _need(cascade, "test.escalation", where)
    for i, point in enumerate(cascade["curve"]):
        for key in ("accuracy", "escalation"):
            _need(point, key, f"{where}.curve[{i}]")
    return cascade


def _labels(run: Path, candidates: list[dict[str, Any]]) -> list[str]:
    data = RunDir(run).data_file
    if data.is_file():
        summary = _read_json(data)
        labels = summary.get("labels") if isinstance(summary, dict) else None
        if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
            return labels
        raise SmallfitError(f"{data}: missing field 'labels'")
    per_class = candidates[0]["quality"].get("per_class") or {}
    return sorted(per_class)


# -- cost ----------------------------------------------------------------------------------------


def per_1m(c: dict[str, Any], hour_usd: float) -> float | None:
    """A candidate's dollars per million queries: its own figure (an API's tokens at its
    prices, a cascade's weighted tiers), else this machine's hour at its batched throughput."""
    own = (c.get("cost") or {}).get("per_1m_queries_usd")
    if own is not None:
        return float(own)
    return per_1m_at(hour_usd, c.get("speed") or {})


def _one_off(run: Path, facts: Facts) -> dict[str, float]:
    """One-off dollars: machine time of the teacher, labelling, training and compression stages
    (stages.json) at the hourly price, plus an API teacher's labelling spend."""
    out = {"machine_seconds": 0.0, "machine_usd": 0.0, "labelling_api_usd": 0.0}
    stages_file = RunDir(run).stages_file
    if stages_file.is_file():
        stages = _read_json(stages_file)
        if not isinstance(stages, dict):
            raise SmallfitError(f"{stages_file}: not an object of stages")
        for name, entry in stages.items():
            if name.startswith(ONE_OFF_STAGES) and isinstance(entry, dict):
                out["machine_seconds"] += float(entry.get("seconds") or 0.0)
    else:
        facts.notes.append(f"{stages_file.name} is missing: one-off machine time counted as 0")
    out["machine_usd"] = out["machine_seconds"] / 3600.0 * facts.hour_usd
    teacher = facts.teacher
    if teacher is not None and (teacher.get("speed") or {}).get("remote"):
        spent = _api_ledger_usd(RunDir(run).answers_file)
        if spent is None:  # estimate: its cost per query over the texts it labelled
            rows = _labelled_rows(run)
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


def _labelled_rows(run: Path) -> int:
    data = RunDir(run).data_file
    if not data.is_file():
        return 0
    summary = _read_json(data)
    return int(summary.get("train", 0)) + int(summary.get("dev", 0))


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
    api_teacher = teacher is not None and bool((teacher.get("speed") or {}).get("remote"))
    if api_teacher:
        per_q = (per_1m(teacher, hour) or 0.0) / 1e6  # type: ignore[arg-type]
        basis = (teacher.get("cost") or {}).get("basis", "measured tokens at its prices")
        options.append(CostOption("API teacher", "api", per_query_usd=per_q, basis=basis))
    else:
        tokens = [
            (c.get("roofline") or {}).get("tokens_per_query")
            for c in facts.candidates
            if (c.get("roofline") or {}).get("tokens_per_query")
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
        if teacher is not None and batched_throughput(teacher["speed"]):
            options.append(
                CostOption(
                    "self-hosted teacher",
                    "self-hosted",
                    throughput_per_s=batched_throughput(teacher["speed"]),
                    one_off_usd=_teacher_one_off(facts),
                    basis="the teacher on machines like this one",
                    **common,
                )
            )
    chosen = facts.candidate(facts.chosen)
    if chosen is not None and chosen["name"] != TEACHER and batched_throughput(chosen["speed"]):
        options.append(
            CostOption(
                f"{chosen['name']} (chosen)",
                "self-hosted",
                throughput_per_s=batched_throughput(chosen["speed"]),
                one_off_usd=facts.one_off["total_usd"],
                basis="the chosen model on machines like this one",
                **common,
            )
        )
    cascade = facts.candidate("cascade")
    if cascade is not None and facts.cascade is not None:
        escalation = float(facts.cascade["test"]["escalation"])
        remote_last = api_teacher and facts.cascade["tiers"][-1] == TEACHER
        first = facts.candidate(facts.cascade["tiers"][0])
        if remote_last and first is not None:  # local tiers on machines, escalations paid per query
            options.append(
                CostOption(
                    "cascade",
                    "cascade",
                    per_query_usd=escalation * options[0].per_query_usd,
                    throughput_per_s=batched_throughput(first["speed"]),
                    one_off_usd=facts.one_off["total_usd"],
                    basis=f"{first['name']} on machines, {escalation:.1%} of queries sent to "
                    "the API teacher",
                    **common,
                )
            )
        elif batched_throughput(cascade["speed"]):
            options.append(
                CostOption(
                    "cascade",
                    "cascade",
                    throughput_per_s=batched_throughput(cascade["speed"]),
                    one_off_usd=facts.one_off["total_usd"],
                    basis=f"every tier on machines like this one ({escalation:.1%} of queries "
                    "reach the teacher)",
                    **common,
                )
            )
    return options, options[0].basis


def _teacher_one_off(facts: Facts) -> float:
    """A fine-tuned teacher's own training time at the hourly price."""
    training = ((facts.teacher or {}).get("lineage") or {}).get("training") or {}
    return float(training.get("seconds") or 0.0) / 3600.0 * facts.hour_usd


# -- where the chosen model is weaker -----------------------------------------------------------


def _confusions(facts: Facts) -> None:
    """The chosen model's most confused (gold, predicted) pairs on test, with example texts,
    from its saved test probabilities and the run's saved test split."""
    name = facts.chosen
    k = facts.report.confused_pairs
    if name is None or k == 0:
        return
    layout = RunDir(facts.run_dir)
    probs_file, split_file = layout.test_probs(name), layout.test_split
    if not probs_file.is_file() or not split_file.is_file():
        missing = probs_file if not probs_file.is_file() else split_file
        facts.confusion_note = f"no confusion pairs: {missing} is missing (written by fit)"
        return
    try:
        probs = np.load(probs_file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SmallfitError(f"{probs_file}: corrupt probabilities ({exc})") from exc
    texts, gold = [], []
    for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
            gold.append(str(row["label"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SmallfitError(f"{split_file}:{n}: not a {{text, label}} row ({exc})") from exc
    model_labels = _model_labels(facts, name)
    if probs.ndim != 2 or probs.shape != (len(texts), len(model_labels)):
        raise SmallfitError(
            f"{probs_file}: shape {probs.shape} does not match {len(texts)} test rows x "
            f"{len(model_labels)} labels"
        )
    predicted = [model_labels[i] for i in probs.argmax(axis=1)]
    counts: dict[tuple[str, str], list[int]] = {}
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if g != p:
            counts.setdefault((g, p), []).append(i)
    top = sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:k]
    facts.confusions = [
        Confusion(g, p, len(rows), [texts[i] for i in rows[: facts.report.examples_per_pair]])
        for (g, p), rows in top
    ]


def _model_labels(facts: Facts, name: str) -> list[str]:
    """The label order of a model's saved probabilities (its manifest; else the run's)."""
    c = facts.candidate(name) or {}
    manifest = Path(str(c.get("model_dir", ""))) / MANIFEST
    for where in (manifest, RunDir(facts.run_dir).model(name) / MANIFEST):
        if where.is_file():
            labels = (_read_json(where) or {}).get("labels")
            if isinstance(labels, list):
                return [str(x) for x in labels]
    return facts.labels


def ratios(facts: Facts, c: dict[str, Any]) -> dict[str, float | None]:
    """x faster, x smaller and % of the teacher's quality (None without a teacher)."""
    return vs_teacher(c, facts.teacher, metric=facts.metric)
