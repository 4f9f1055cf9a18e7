"""The task, from captured traffic: the template, the label set, the answer's form and a
deduplicated dataset, written as files the user can read and edit (``smallfit task``).

Out of a capture store come:

- ``task.yaml``: the template (the messages before the text, the user message around it, the
  model and ``response_format``), the answer's form (a bare label, or JSON with the label under
  one key), the labels with their counts, and what was left out and why;
- ``data.jsonl``: one row per distinct text, ``{"text", "upstream"}`` with the upstream's
  answer (absent for texts it has not answered yet), its tokens and latency;
- ``fit.yaml``: a ready config whose teacher is the upstream itself (an ``llm`` teacher with the
  captured template), its answers in ``data.jsonl`` reused, never asked again.

Exact and near-duplicate texts are merged first (:mod:`smallfit.capture.dedup`), so no text
or near-copy can sit in both train and test; ``fit.yaml`` also sets ``data.leakage: error``.
A capture that mixes templates lists them and asks which one: they are never merged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smallfit.capture.dedup import clusters, normalise
from smallfit.capture.store import CaptureStore, Exchange
from smallfit.errors import SmallfitError
from smallfit.llm.template import Template, find_templates

PLAIN = "(no template: imported inputs and pairs)"


@dataclass
class Answers:
    """How the upstream answers: ``form`` ``label`` (the content is the label) or ``json`` (an
    object with the label under ``key``); ``labels`` from the schema's enum, if any."""

    form: str = "label"
    key: str | None = None
    labels: list[str] | None = None

    def parse(self, content: str | None) -> str | None:
        if content is None:
            return None
        if self.form == "label":
            return content.strip() or None
        try:
            value = json.loads(content)
        except ValueError:
            return None
        found = value.get(self.key) if isinstance(value, dict) and self.key else None
        return (found.strip() or None) if isinstance(found, str) else None


@dataclass
class TaskSummary:
    """What :func:`build_task` found and wrote."""

    out_dir: Path
    template: Template | None
    answers: Answers
    labels: dict[str, int]
    rows: int
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        c = self.counts
        return (
            f"{self.rows} distinct texts ({c.get('answered', 0)} answered by the upstream) in "
            f"{self.out_dir / 'data.jsonl'}; {len(self.labels)} labels; merged "
            f"{c.get('exact_duplicates', 0)} exact and {c.get('near_duplicates', 0)} near "
            f"duplicates; left out {c.get('incomplete', 0)} incomplete exchanges and "
            f"{c.get('unparseable', 0)} unparseable answers. Review {self.out_dir / 'task.yaml'}, "
            f"then: smallfit fit --config {self.out_dir / 'fit.yaml'}"
        )


def answers_of(template: Template | None, contents: list[str]) -> Answers:
    """The answer's form: from ``response_format`` when it fixes one string property (its
    enum, if any, is the label set), else JSON when every answer is an object with one
    string under the same key, else a bare label."""
    fmt = (template.response_format if template else None) or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    schema = schema if isinstance(schema, dict) else fmt.get("schema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(props, dict) and len(props) == 1:
        ((key, spec),) = props.items()
        if isinstance(spec, dict) and spec.get("type") == "string":
            enum = spec.get("enum")
            labels = [str(x) for x in enum] if isinstance(enum, list) else None
            return Answers("json", key, labels)
    keys: set[str] = set()
    for content in contents:
        try:
            value = json.loads(content)
        except ValueError:
            return Answers()
        if not (isinstance(value, dict) and len(value) == 1):
            return Answers()
        ((key, label),) = value.items()
        if not isinstance(label, str):
            return Answers()
        keys.add(key)
    return Answers("json", keys.pop()) if len(keys) == 1 and contents else Answers()


def build_task(
    store: CaptureStore,
    out_dir: str | Path,
    *,
    template: int | None = None,
    near_duplicates: float = 0.8,
    upstream: str | None = None,
    stages: dict[str, Any] | None = None,
) -> TaskSummary:
    """Turn the capture in ``store`` into ``out_dir/{task.yaml, data.jsonl, fit.yaml}``.

    ``template`` (1-based, largest first) picks one of several templates; without it a capture
    with several is an error that lists them. ``upstream`` is the base URL the teacher calls
    for texts it has not answered (default: the one the capture proxied); ``stages`` (fit
    config sections: students, compress, evaluate ...) go into ``fit.yaml`` as they are."""
    out = Path(out_dir)
    rows = list(store.exchanges())
    usable = [r for r in rows if r.complete or _awaiting(r)]
    counts: Counter[str] = Counter(incomplete=len(rows) - len(usable))
    with_request = [r for r in usable if r.request is not None]
    plain = [r for r in usable if r.request is None]
    templates, which = find_templates([r.request or {} for r in with_request])
    groups: list[tuple[Template | None, list[tuple[Exchange, str]]]] = []
    for number, t in enumerate(templates):
        cut = [
            (r, t.cut(r.request or {}))
            for r, w in zip(with_request, which, strict=True)
            if w == number
        ]
        groups.append((t, [(r, text) for r, text in cut if text is not None]))
    if plain:
        groups.append((None, [(r, r.text) for r in plain if r.text]))
    counts["not_text_requests"] = sum(1 for w in which if w < 0)
    groups.sort(key=lambda g: -len(g[1]))
    if not groups:
        raise SmallfitError(f"{store.path}: no usable exchange (none complete, none to label)")
    if template is None and len(groups) > 1:
        listing = "\n".join(
            f"  {i}. {g[0].describe() if g[0] else f'{len(g[1])} rows {PLAIN}'}"
            for i, g in enumerate(groups, start=1)
        )
        raise SmallfitError(
            f"{store.path} holds {len(groups)} different tasks (templates); they are never "
            f"merged. Pick one with --template N:\n{listing}"
        )
    index = 1 if template is None else template
    if not 1 <= index <= len(groups):
        raise SmallfitError(f"--template {index}: the capture has {len(groups)} template(s)")
    chosen, members = groups[index - 1]
    counts["other_templates"] = sum(len(g[1]) for i, g in enumerate(groups) if i != index - 1)
    answered = [r.answer for r, _ in members if r.complete and r.answer is not None]
    answers = answers_of(chosen, answered)
    texts = [text for _, text in members]
    cluster = clusters(texts, threshold=near_duplicates)
    data = _merge(members, cluster, answers, counts)
    labels = Counter(row["upstream"] for row in data if "upstream" in row)
    label_set = answers.labels or sorted(labels)
    if len(label_set) < 2:
        raise SmallfitError(
            f"{store.path}: the upstream's answers name {len(label_set)} label(s) "
            f"({', '.join(label_set) or 'none'}); a classifier needs at least 2"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "data.jsonl").open("w", encoding="utf-8") as handle:
        for row in data:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = TaskSummary(
        out_dir=out,
        template=chosen,
        answers=answers,
        labels={label: labels.get(label, 0) for label in label_set},
        rows=len(data),
        counts=dict(counts),
    )
    _write_yaml(out / "task.yaml", _task_yaml(summary, store.path))
    fit = _fit_yaml(summary, upstream or store.upstream()) | (stages or {})
    _write_yaml(out / "fit.yaml", fit)
    return summary


def _awaiting(r: Exchange) -> bool:
    """An imported text (or request) the upstream has not answered: for the teacher to label."""
    return not r.complete and r.status is None and r.error is None and r.answer is None


def _merge(
    members: list[tuple[Exchange, str]], cluster: list[int], answers: Answers, counts: Counter[str]
) -> list[dict[str, Any]]:
    """One row per cluster: its first text, the upstream's majority answer among its
    members, and the first answering member's tokens and latency."""
    by_root: dict[int, list[int]] = {}
    for i, root in enumerate(cluster):
        by_root.setdefault(root, []).append(i)
    texts = [t for _, t in members]
    exact = {i for i in range(len(texts)) if cluster[i] != i}
    counts["exact_duplicates"] = sum(
        1 for i in exact if normalise(texts[i]) == normalise(texts[cluster[i]])
    )
    counts["near_duplicates"] = len(exact) - counts["exact_duplicates"]
    out = []
    for root, rows in by_root.items():
        votes: Counter[str] = Counter()
        first = None
        for i in rows:
            exchange = members[i][0]
            if not exchange.complete:
                continue
            label = answers.parse(exchange.answer)
            if label is None:
                counts["unparseable"] += 1
                continue
            if answers.labels is not None and label not in answers.labels:
                counts["outside_label_set"] += 1
                continue
            votes[label] += 1
            first = first or exchange
        row: dict[str, Any] = {"text": texts[root]}
        if votes:
            label = votes.most_common(1)[0][0]
            counts["answered"] += 1
            counts["conflicting_answers"] += int(len(votes) > 1)
            row["upstream"] = label
            assert first is not None
            for key in ("prompt_tokens", "completion_tokens", "latency_ms"):
                if getattr(first, key) is not None:
                    row[key] = getattr(first, key)
        out.append(row)
    return out


def _task_yaml(summary: TaskSummary, source: Path) -> dict[str, Any]:
    t = summary.template
    return {
        "source": str(source),
        "template": t.to_dict() if t else PLAIN,
        "answer": {"form": summary.answers.form, "key": summary.answers.key},
        "labels": summary.labels,
        "rows": summary.rows,
        "counts": summary.counts,
    }


def _fit_yaml(summary: TaskSummary, upstream: str | None) -> dict[str, Any]:
    """The fit config (absolute paths: fit reads relative ones from the working directory)."""
    t = summary.template
    data = str((summary.out_dir / "data.jsonl").resolve())
    instruction = "{text}"
    if t is not None:
        instruction = _braces(t.prefix) + "{text}" + _braces(t.suffix)
    teacher: dict[str, Any] = {
        "source": "llm",
        "base_url": upstream,
        "model": t.model if t else None,
        "context": t.context if t else [],
        "instruction": instruction,
        "answer": "text",
        "answer_key": summary.answers.key,
        "response_format": t.response_format if t else None,
        "probabilities": "argmax",
        "recorded": data,
    }
    return {
        "run_dir": str((summary.out_dir / "run").resolve()),
        "data": {
            "train": data,
            "labels": list(summary.labels),
            "leakage": "error",
        },
        "teacher": {k: v for k, v in teacher.items() if v is not None and v != []},
    }


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8"
    )
