"""The cascade: its calibration curve, its check on test and its out-of-scope catch."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import Facts
from smallfit.report.fmt import (
    ms,
    pct,
    usd,
)
from smallfit.report.oos import out_of_scope_html
from smallfit.report.svg import Axis, Chart


def cascade(f: Facts) -> str:
    if f.cascade is None:
        return (
            '<section id="cascade"><h2>Cascade</h2><p>This run has no cascade (it needs a '
            "teacher, and the teacher itself must not be the chosen model).</p></section>"
        )
    cc = f.cascade
    what = f.cascade_measure
    curve = sorted(cc.curve, key=lambda p: 1 - p.escalation)
    local = [1 - p.escalation for p in curve]
    acc = [p.accuracy for p in curve]
    chosen_dev = cc.dev
    ref = cc.reference_accuracy.get("dev")
    x = Axis.around(
        local,
        "share of queries answered before the last tier (%)",
        pad=0.04,
        fmt=lambda v: f"{100 * v:.0f}",
        floor=0.0,
        ceil=1.0,
    )
    y = Axis.around(
        acc + ([ref] if ref else []),
        f"{what} on dev (%)",
        pad=0.08,
        fmt=lambda v: f"{100 * v:.1f}",
    )
    chart = Chart(
        x,
        y,
        f"Cascade trade-off on dev: share answered locally against {what}",
        key="cascade-accuracy",
    )
    chart.line(list(zip(local, acc, strict=True)), cls="curve")
    if ref:
        chart.hline(ref, f"last tier alone {pct(ref)}")
    chart.point(
        1 - chosen_dev.escalation,
        chosen_dev.accuracy,
        r=7,
        cls="mark chosen",
        shape="diamond",
        tip=f"chosen: {pct(1 - chosen_dev.escalation, 1)} local, {what} {pct(chosen_dev.accuracy)}",
        data={"field": "chosen-point"},
    )
    svgs = [chart.render()]
    costs = [p.cost_per_1m_usd for p in curve if p.cost_per_1m_usd is not None]
    if costs and len(costs) == len(curve):
        y2 = Axis.around(costs, "$ per 1M queries", pad=0.08, fmt=lambda v: f"{v:.3g}", floor=0.0)
        chart2 = Chart(
            x,
            y2,
            "Cascade cost per 1M queries against the share answered locally",
            height=260,
            key="cascade-cost",
        )
        chart2.line(list(zip(local, costs, strict=True)), cls="curve cost")
        if chosen_dev.cost_per_1m_usd is not None:
            chart2.point(
                1 - chosen_dev.escalation,
                chosen_dev.cost_per_1m_usd,
                r=7,
                cls="mark chosen",
                shape="diamond",
            )
        svgs.append(chart2.render())
    rows = []
    for split, p in (("dev", cc.dev), ("test", cc.test)):
        if p is None:
            continue
        ref_split = cc.reference_accuracy.get(split)
        rows.append(
            f'<tr data-split="{split}"><td>{split}</td>'
            f'<td data-field="local">{pct(1 - p.escalation, 1)}</td>'
            f'<td data-field="accuracy">{pct(p.accuracy)}</td><td>{pct(ref_split)}</td>'
            f"<td>{pct(p.abstained, 1)}</td><td>{usd(p.cost_per_1m_usd)}</td>"
            f"<td>{ms(p.mean_latency_ms)}</td></tr>"
        )
    thresholds = ", ".join(f"{t:.3f}" for t in cc.thresholds)
    oos_line = out_of_scope_html(cc.out_of_scope)
    return (
        '<section id="cascade"><h2>Cascade</h2>'
        f"<p>Tiers <strong>{escape(' → '.join(cc.tiers))}</strong>; a tier answers when its "
        f"{escape(cc.confidence)} clears its threshold ({thresholds}); "
        f"target <code>{escape(cc.target)}</code>, calibrated on dev and checked "
        "once on test.</p>"
        + "".join(f'<figure class="plot">{s}</figure>' for s in svgs)
        + '<table class="small" id="cascade-points"><thead><tr><th>split</th><th>answered '
        f"locally</th><th>{what}</th><th>last tier alone</th><th>abstained</th><th>$ / 1M</th>"
        "<th>mean latency</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + oos_line
        + "</section>"
    )
