"""An extract task's "where it is weaker": per-field scores of the chosen model beside the
teacher's, weakest first, and example errors against gold (or the teacher's answers)."""

from __future__ import annotations

from html import escape
from typing import Any

from smallfit.evaluate.fields import norm
from smallfit.report.facts import Facts
from smallfit.report.fmt import f1_cells, pct
from smallfit.run.layout import TEACHER
from smallfit.run.records import CandidateResult, FieldScore
from smallfit.run.store import read_jsonl

EXAMPLES = 8


def fields_section(f: Facts, chosen: CandidateResult) -> str:
    fields = chosen.quality.fields
    assert fields is not None
    theirs = (
        {}
        if f.teacher is None or f.teacher.quality.fields is None
        else (f.teacher.quality.fields.per_field)
    )
    rows = []
    for name, m in fields.per_field.items():
        t = theirs.get(name)
        if not m.support and not (t and t.support):
            continue
        rows.append((name, m, t, None if t is None else m.f1 - t.f1))
    rows.sort(key=lambda r: (r[3] if r[3] is not None else r[1].f1, r[0]))
    k = f.report.worst_classes

    def tr(name: str, m: FieldScore, t: FieldScore | None, gap: float | None) -> str:
        return (
            f'<tr data-field-name="{escape(name)}"><td>{escape(name)}</td>'
            f"{f1_cells(m.f1, None if t is None else t.f1, gap)}"
            f"<td>{pct(m.precision, 1)}</td><td>{pct(m.recall, 1)}</td>"
            f"<td>{pct(m.exact, 1)}</td><td>{m.support}</td></tr>"
        )

    head = (
        "<thead><tr><th>field</th><th>F1 (chosen)</th><th>F1 (teacher)</th><th>gap</th>"
        "<th>precision</th><th>recall</th><th>exact</th><th>test values</th></tr></thead>"
    )
    summary = (
        f"micro F1 {pct(fields.micro_f1, 2)}, macro F1 {pct(fields.macro_f1, 2)}, every field "
        f"right on {pct(fields.doc_exact, 1)} of texts, valid JSON {pct(fields.json_valid, 1)}"
    )
    worst = "".join(tr(*r) for r in rows[:k])
    rest = "".join(tr(*r) for r in rows[k:])
    return (
        '<section id="weaker"><h2>Where it is weaker</h2>'
        f"<p><strong>{escape(chosen.name)}</strong> on test: {summary}. Per-field F1 against "
        "the teacher's, largest loss first.</p>"
        f'<table class="small" id="per-field">{head}<tbody>{worst}</tbody></table>'
        + (
            f"<details><summary>All {len(rows)} fields</summary>"
            f'<table class="small">{head}<tbody>{rest}</tbody></table></details>'
            if rest
            else ""
        )
        + _examples(f, chosen.name)
        + "</section>"
    )


def _values(obj: Any) -> dict[str, set[str]]:
    if not isinstance(obj, dict):
        return {}
    out: dict[str, set[str]] = {}
    for name, value in obj.items():
        items = value if isinstance(value, list) else [value]
        out[str(name)] = {norm(str(v)) for v in items}
    return out


def _examples(f: Facts, name: str) -> str:
    """Test texts the chosen model got wrong: the values it missed and the ones it added,
    against gold (the teacher's answers where a text has no gold)."""
    test = read_jsonl(f.store.dir.test_split) or []
    mine = f.store.read_answers(name) or []
    teacher = (f.store.read_answers(TEACHER) or []) if name != TEACHER else []
    items = []
    for i, (row, answer) in enumerate(zip(test, mine, strict=False)):
        reference = row.get("fields") if isinstance(row, dict) else None
        against = "gold"
        if reference is None and i < len(teacher):
            reference, against = teacher[i].get("fields"), "teacher"
        if reference is None:
            continue
        want, got = _values(reference), _values(answer.get("fields"))
        if want == got:
            continue
        missed = [f"{k}: {v}" for k in want for v in sorted(want[k] - got.get(k, set()))]
        added = [f"{k}: {v}" for k in got for v in sorted(got[k] - want.get(k, set()))]
        items.append(
            f"<tr><td>{escape(str(row.get('text', '')))}</td>"
            f"<td>{escape('; '.join(missed)) or '–'}</td><td>{escape('; '.join(added)) or '–'}"
            f"</td><td>{against}</td></tr>"
        )
        if len(items) == EXAMPLES:
            break
    if not items:
        return ""
    return (
        "<h3>Example errors</h3>"
        '<table class="small" id="field-errors"><thead><tr><th>text</th><th>missed</th>'
        "<th>added</th><th>against</th></tr></thead><tbody>" + "".join(items) + "</tbody></table>"
    )
