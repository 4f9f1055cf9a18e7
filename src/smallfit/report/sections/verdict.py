"""The verdict: what to run, how sure the test set is, and what it saves."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import TEACHER, Facts, per_1m, ratios
from smallfit.report.fmt import (
    pct,
    usd,
)
from smallfit.report.uncertainty import (
    cascade_vs_teacher_html,
    ci_text,
    diff_text,
    resolution_html,
)


def verdict(f: Facts) -> str:
    chosen = f.candidate(f.chosen)
    metric = f.metric.replace("_", " ")
    if chosen is None:
        reason = (f.selection.reason if f.selection else "") or "no candidate met the quality floor"
        return (
            f'<section id="verdict"><h2>Verdict</h2>{recommended_html(f)}'
            '<p class="verdict" data-chosen="">'
            f"No model was chosen: {escape(reason)}.</p>{resolution_html(f)}</section>"
        )
    r = ratios(f, chosen)
    cost = per_1m(chosen, f.hour_usd)
    parts = [f'<strong data-field="chosen">{escape(chosen.name)}</strong>']
    value = f'<span data-field="metric">{pct(chosen.quality.value(f.metric))}</span>'
    interval = f'<span data-field="metric_ci">{ci_text(chosen.quality.interval(f.metric))}</span>'
    if f.teacher is not None and chosen.name != TEACHER:
        teacher_cost = per_1m(f.teacher, f.hour_usd)
        paired = chosen.quality.paired(f.metric)
        if f.metric == "teacher_agreement":
            parts.append(
                f" gives the teacher's answer on {value} of test texts (95% CI {interval})"
            )
        else:
            parts.append(
                f' keeps <span data-field="quality_pct">{r["quality_pct"]:.1f}%</span> of the '
                f"teacher's {escape(metric)} "
                f"({value}, 95% CI {interval}, against "
                f"{pct(f.teacher.quality.value(f.metric))}"
                + (
                    f'; paired difference <span data-field="diff">{diff_text(paired)}</span>'
                    if f.metric in ("accuracy", "macro_f1")
                    else ""
                )
                + ")"
            )
        if r["speedup_p50_1t"] is not None:
            parts.append(f', <span data-field="speedup">{r["speedup_p50_1t"]:.0f}x</span> faster')
        if r["size_ratio"] is not None:
            parts.append(f', <span data-field="size_ratio">{r["size_ratio"]:.0f}x</span> smaller')
        if cost is not None and teacher_cost is not None:
            parts.append(
                f', <span data-field="cost">{usd(cost)}</span> per 1M queries instead of '
                f'<span data-field="teacher_cost">{usd(teacher_cost)}</span>'
            )
        parts.append(".")
    else:
        parts.append(
            f" was chosen: {escape(metric)} {value} (95% CI {interval}), "
            f"{usd(cost)} per 1M queries. {escape(f.selection.reason if f.selection else '')}."
        )
    lines = [f'<p class="verdict" data-chosen="{escape(chosen.name)}">{"".join(parts)}</p>']
    lines.append(gold_html(f))
    api = f.cost_options[0] if f.cost_options and f.cost_options[0].kind == "api" else None
    if api is not None and chosen.name != TEACHER and cost is not None:
        lines.append(
            f'<p class="aside">For comparison: {escape(api.name)} costs about '
            f"{usd(api.per_query_usd * 1e6)} per 1M queries ({escape(api.basis)}).</p>"
        )
    if f.cascade is not None and f.cascade.test is not None:
        t = f.cascade.test
        ref = f.cascade.reference_accuracy.get("test")
        tiers = " → ".join(f.cascade.tiers)
        against = f.cascade_measure
        if f.cascade.scored_against == "teacher":
            against = (
                "micro F1 against the teacher"
                if f.config.task == "extract"
                else "agreement with the teacher"
            )
        lines.append(
            f'<p class="verdict2">With the cascade <strong>{escape(tiers)}</strong>, '
            f'<span data-field="cascade_local">{pct(1 - t.escalation, 1)}</span> of test '
            f"queries never reach the last tier, at {against} "
            f'<span data-field="cascade_accuracy">{pct(t.accuracy)}</span>'
            + (f" (the last tier alone: {pct(ref)})" if ref is not None else "")
            + cascade_vs_teacher_html(f)
            + (
                f", {usd(t.cost_per_1m_usd)} per 1M queries"
                if t.cost_per_1m_usd is not None
                else ""
            )
            + ".</p>"
        )
    why = None if f.selection is None else f.selection.reason
    if why:
        lines.append(f'<p class="aside">Selection: {escape(why)}.</p>')
    lines.append(resolution_html(f))
    return (
        '<section id="verdict"><h2>Verdict</h2>'
        + recommended_html(f)
        + "".join(lines)
        + "</section>"
    )


def gold_html(f: Facts) -> str:
    """What the quality figures are measured against: how many test texts have a gold label,
    and the teacher's audit on the pool's gold labels. Empty when every text has gold."""
    q = (f.teacher or f.candidates[0]).quality
    if q.n_gold in (None, q.n):
        return ""
    if not q.n_gold:
        text = (
            "No test text has a gold label: every quality figure here is agreement with the "
            "teacher's answers."
        )
    else:
        text = (
            f"{q.n_gold:,} of the {q.n:,} test texts have a gold label: accuracy, macro F1 and "
            "calibration are measured on those, agreement with the teacher on all of them."
        )
    audit = f.store.read_labels_summary()
    if audit is not None and audit.gold_agreement is not None:
        ci = audit.gold_agreement_ci95
        text += (
            f" Audit: the teacher agrees with gold on {pct(audit.gold_agreement)}"
            + (f" (95% CI {ci_text(ci)})" if ci else "")
            + f" of the {audit.gold_rows or 0:,} pool texts with a gold label."
        )
    return f'<p class="aside" data-field="gold">{escape(text)}</p>'


def recommended_html(f: Facts) -> str:
    """The recommended deployment first, when it is not the chosen model (the cascade, when
    the teacher was chosen and the cascade keeps a real share of queries off it)."""
    advice = None if f.selection is None else f.selection.recommended
    if advice is None or not advice.name or advice.name == f.chosen:
        return ""
    tiers = " → ".join(f.cascade.tiers if f.cascade else [advice.name])
    return (
        f'<p class="verdict" data-recommended="{escape(advice.name)}">Recommended deployment: '
        f"<strong>the cascade {escape(tiers)}</strong>: {escape(advice.reason)}.</p>"
    )
