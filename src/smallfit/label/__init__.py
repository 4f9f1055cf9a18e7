"""``smallfit label``: label a data file with an LLM teacher, as a library call.

The teacher is an :class:`~smallfit.config.LLMTeacher` (from a YAML file, command-line
overrides, and the environment). Output is JSONL in input order, one line per row:
``{"line", "text", "label", "status", "confidence", "probs"}`` (and ``"gold"`` when the data
has labels), where ``status`` is ``ok``, ``unparseable``, ``failed`` (retries ran out) or
``not-sent`` (the budget stopped the run first) and ``probs`` lists the labels with probability
of at least 0.01. Every answer is in the SQLite cache as soon as it arrives, so a rerun (after a
crash, a kill or a raised budget) sends only what is missing.

The cost per 1M texts is the answers' mean tokens (whichever run paid for them) at the prices:
the stated ones, else those an earlier run stated and the cache recorded. What this run spent
is reported apart. Library output goes to ``out`` with the suffix ``.log``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smallfit.config import format_validation_error, read_yaml_mapping
from smallfit.data import read_split
from smallfit.engine.config import EngineConfig
from smallfit.errors import ConfigError, SmallfitError
from smallfit.llm.labeller import PRICES_FROM_CACHE, PRICES_UNKNOWN, LabelReport
from smallfit.llm.prompt import draw_examples
from smallfit.logs import routed
from smallfit.teach.config import LLMTeacher

SHOWN_PROB = 0.01

_OVERRIDES = {
    "base_url": ("base_url",),
    "model": ("model",),
    "api_key_env": ("api_key_env",),
    "price_input": ("prices", "input_per_1m"),
    "price_output": ("prices", "output_per_1m"),
    "concurrency": ("concurrency",),
    "timeout_s": ("timeout_s",),
    "budget_usd": ("budget_usd",),
    "budget_tokens": ("budget_tokens",),
    "probabilities": ("probabilities",),
    "few_shot": ("few_shot",),
}


@dataclass(frozen=True)
class LabelResult:
    """What :func:`label_file` did: lines to print, the report, and whether the budget
    stopped it."""

    out: Path
    report: LabelReport
    lines: list[str]
    stopped_by_budget: bool
    cost: dict[str, Any]
    """The cost per 1M texts and its tokens per text (see ``LLMClassifier.cost_per_1m_queries``):
    the answers' tokens at the prices, whichever run paid for them."""


def teacher_config(teacher_file: Path | None, overrides: dict[str, Any]) -> LLMTeacher:
    """The LLM teacher from ``teacher_file`` (YAML) with ``overrides`` (option name -> value)."""
    source = str(teacher_file) if teacher_file else "command line"
    raw: dict[str, Any] = {}
    if teacher_file is not None:
        loaded = read_yaml_mapping(teacher_file)
        raw = dict(loaded.get("teacher", loaded))  # a teacher, or a fit config holding one
    if raw.setdefault("source", "llm") != "llm":
        raise ConfigError(f"{source}: source must be 'llm' to label with an API")
    for option, value in overrides.items():
        *parents, leaf = _OVERRIDES[option]
        target = raw
        for part in parents:  # a copy: the file may hold `prices: null`
            target[part] = dict(target.get(part) or {})
            target = target[part]
        target[leaf] = value
    try:
        return LLMTeacher.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from exc


def _label_set(label_list: str | None, gold: list[str] | None) -> list[str]:
    if label_list:
        labels = list(dict.fromkeys(x.strip() for x in label_list.split(",") if x.strip()))
    elif gold:
        labels = sorted(set(gold))
    else:
        raise SmallfitError("no label set: pass --labels a,b,c or data with a label field")
    return labels


@routed(lambda *_, out, **__: Path(out).with_suffix(".log"))  # library output: beside `out`
def label_file(
    data_file: Path,
    *,
    teacher_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    label_list: str | None = None,
    text_field: str = "text",
    label_field: str | None = "label",
    limit: int | None = None,
    cache: Path | None = None,
    out: Path,
    progress: bool = True,
    engine: EngineConfig | None = None,
) -> LabelResult:
    """Label ``data_file`` into ``out`` (JSONL); see the module docstring. ``engine``:
    where the requests run (``kind: ray`` spreads them over Ray workers)."""
    from smallfit.teach import llm_classifier

    config = teacher_config(teacher_file, overrides or {})
    split = read_split(data_file, text_field=text_field, label_field=label_field)
    texts = split.texts[:limit] if limit else split.texts
    gold = split.labels[: len(texts)] if label_field else None
    labels = _label_set(label_list, gold)
    if config.few_shot and not gold:
        raise SmallfitError("few-shot examples need gold labels (--label-field)")
    examples: list[tuple[str, str]] = []
    if config.few_shot and gold:
        known = [(t, g) for t, g in zip(texts, gold, strict=True) if g in labels]
        examples = draw_examples(
            [t for t, _ in known], [g for _, g in known], config.few_shot, seed=config.seed
        )
    out = Path(out)
    model = llm_classifier(
        config, labels, examples=examples, name="llm", cache=cache or out.with_suffix(".sqlite")
    )
    answers, report, cost, (prices, prices_source) = ask_all(model, texts, engine, progress)
    status_of = {"ok-no-logprobs": "ok"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    agree = answered = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            answer = answers[i]
            row: dict[str, Any] = {"line": split.lines[i] if split.lines else i + 1, "text": text}
            if answer is None:
                row |= {"label": None, "status": "failed" if not report.stopped else "not-sent"}
            else:
                row["label"] = answer.label
                row["status"] = status_of.get(answer.status, answer.status)
                if answer.probs is not None:
                    row["confidence"] = round(float(answer.probs.max()), 4)
                    row["probs"] = {
                        labels[j]: round(float(p), 4)
                        for j, p in sorted(enumerate(answer.probs), key=lambda x: -x[1])
                        if p >= SHOWN_PROB
                    }
            if gold is not None:
                row["gold"] = gold[i]
                if row["label"] is not None:
                    answered += 1
                    agree += row["label"] == gold[i]
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    lines = summary_lines(out, report, cost, prices, prices_source)
    if gold is not None and answered:
        lines.append(f"agreement with gold: {agree / answered:.1%} of {answered} answered")
    return finished(out, report, lines, cost)


def ask_all(
    model: Any, texts: list[str], engine: EngineConfig | None, progress: bool
) -> tuple[list[Any], LabelReport, dict[str, Any], tuple[Any, str]]:
    """Every text asked of ``model`` (an LLM model; over ``engine`` when given), then closed:
    the answers, the report, the cost per 1M texts, and the prices with where they came from."""
    if engine is not None:
        model.use_engine(engine)
    try:
        answers, report = model.labelled(texts, progress=progress, spread=True)
        cost = model.cost_per_1m_queries()
        return answers, report, cost, (model.labeller.prices, model.labeller.prices_source)
    finally:
        model.close()


def summary_lines(
    out: Path, report: LabelReport, cost: dict[str, Any], prices: Any, prices_source: str
) -> list[str]:
    """What a labelling run says when it ends: where the answers went, the report, the rate,
    the cost per text and what this run spent."""
    lines = [f"labels written to {out}", report.summary()]
    if report.answered:
        lines.append(f"new answers: {report.rows_per_s} texts/s over {report.seconds:.1f}s")
    per_text = (
        f"per text: {cost['prompt_tokens_per_query']:.0f} prompt + "
        f"{cost['completion_tokens_per_query']:.1f} completion tokens = "
        f"${cost['per_1m_queries_usd']:.2f} per 1M texts"
    )
    if prices_source == PRICES_FROM_CACHE:
        per_text += f" at the prices recorded in the cache ({prices.describe()})"
    elif prices_source == PRICES_UNKNOWN:
        per_text += " (no prices given: --price-input, --price-output)"
    lines += [per_text, _run_spending(report)]
    spent = report.spent
    if spent.get("estimated", {}).get("cost_usd") or spent.get("usage_unknown_requests"):
        lines.append(
            f"ledger: ${spent['measured']['cost_usd']:.4f} measured + "
            f"${spent['estimated']['cost_usd']:.4f} estimated (attempts the server did but whose "
            f"usage never arrived); {spent['usage_unknown_requests']} with usage unknown"
        )
    return lines


def finished(out: Path, report: LabelReport, lines: list[str], cost: dict[str, Any]) -> LabelResult:
    """The result of a labelling run, with the budget's stop said last."""
    budget_stop = bool(report.stopped and report.stopped.startswith("budget"))
    if budget_stop:
        lines.append(
            f"stopped by the budget ({report.stopped}): {report.not_sent} texts not sent; "
            "raise it and rerun to finish (nothing is sent twice)"
        )
    return LabelResult(
        out=out, report=report, lines=lines, stopped_by_budget=budget_stop, cost=cost
    )


def _run_spending(report: LabelReport) -> str:
    """What this run paid, apart from the cost per text (which does not depend on it)."""
    run = report.run_spent
    if not run.get("requests"):
        if report.cached == report.unique:
            return f"this run spent $0.0000: all {report.cached} answers from the cache"
        return f"this run spent $0.0000: nothing sent, {report.cached} answers from the cache"
    return (
        f"this run spent ${run['cost_usd']:.4f} ({run['tokens']:,} tokens, "
        f"{run['requests']} requests) on {report.answered} new answers; "
        f"{report.cached} from the cache"
    )
