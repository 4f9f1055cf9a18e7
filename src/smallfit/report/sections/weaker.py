"""Where the chosen model is weaker: per-class scores and the most confused pairs."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import Facts
from smallfit.report.fmt import f1_cells, pct
from smallfit.run.records import ClassScore


def weaker(f: Facts) -> str:
    chosen = f.candidate(f.chosen)
    if chosen is None:
        return ""
    if chosen.quality.fields is not None:  # an extract task's: per field
        from smallfit.report.sections.fields import fields_section

        return fields_section(f, chosen)
    mine = chosen.quality.per_class
    theirs = {} if f.teacher is None else f.teacher.quality.per_class
    if not mine:
        why = (
            "No test text has a gold label, so there are no per-class scores."
            if chosen.quality.n_gold == 0
            else "No per-class figures in results.json."
        )
        return (
            f'<section id="weaker"><h2>Where it is weaker</h2><p>{why}</p>'
            f"{confused_pairs_html(f, chosen.name)}</section>"
        )
    rows = []
    for label, m in mine.items():
        t = theirs.get(label)
        gap = None if t is None else m.f1 - t.f1
        rows.append((label, m, t, gap))
    rows.sort(key=lambda r: (r[3] if r[3] is not None else r[1].f1, r[0]))
    k = f.report.worst_classes

    def tr(label: str, m: ClassScore, t: ClassScore | None, gap: float | None) -> str:
        return (
            f'<tr data-label="{escape(label)}"><td>{escape(label)}</td>'
            f"{f1_cells(m.f1, None if t is None else t.f1, gap)}"
            f"<td>{pct(m.precision, 1)}</td><td>{pct(m.recall, 1)}</td>"
            f"<td>{m.support}</td></tr>"
        )

    head = (
        "<thead><tr><th>class</th><th>F1 (chosen)</th><th>F1 (teacher)</th><th>gap</th>"
        "<th>precision</th><th>recall</th><th>test rows</th></tr></thead>"
    )
    worst = "".join(tr(*r) for r in rows[:k])
    rest = "".join(tr(*r) for r in rows[k:])
    pairs = confused_pairs_html(f, chosen.name)
    return (
        '<section id="weaker"><h2>Where it is weaker</h2>'
        f"<p>Per-class F1 of <strong>{escape(chosen.name)}</strong> on test against the "
        "teacher's, largest loss first.</p>"
        f'<table class="small" id="per-class">{head}<tbody>{worst}</tbody></table>'
        + (
            f"<details><summary>All {len(rows)} classes</summary>"
            f'<table class="small">{head}<tbody>{rest}</tbody></table></details>'
            if rest
            else ""
        )
        + pairs
        + "</section>"
    )


def confused_pairs_html(f: Facts, name: str) -> str:
    """The chosen model's most confused pairs on test, against gold (or the teacher's answers
    when no test text has a gold label)."""
    pairs = ""
    if f.confusions:
        items = "".join(
            f'<tr data-gold="{escape(c.gold)}" data-predicted="{escape(c.predicted)}">'
            f"<td>{escape(c.gold)}</td><td>{escape(c.predicted)}</td>"
            f'<td data-field="count">{c.count}</td><td><ul class="examples">'
            + "".join(f"<li>{escape(e)}</li>" for e in c.examples)
            + "</ul></td></tr>"
            for c in f.confusions
        )
        reference = "gold label" if f.confusion_against == "gold" else "teacher's answer"
        pairs = (
            f"<h3>Most confused pairs ({escape(name)}, test)</h3>"
            f'<table class="small" id="confusions"><thead><tr><th>{reference}</th>'
            "<th>predicted</th><th>texts</th><th>examples</th></tr></thead>"
            f"<tbody>{items}</tbody></table>"
        )
    elif f.confusion_note:
        pairs = f'<p class="caption">{escape(f.confusion_note)}</p>'
    return pairs
