"""The cascade section's out-of-scope part: what the abstaining tier catches, every score's
catch-rate-against-in-scope-loss curve (from ``cascade.json``'s ``out_of_scope.evaluation``),
and the catch per held-out label. Reads saved results only."""

from __future__ import annotations

from html import escape
from typing import Any

from smallfit.report.svg import Axis, Chart

SERIES = 7
"""Series colours the page's CSS defines (``--s0`` .. ``--s6``)."""


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _at(curve: list[dict[str, Any]], loss: float) -> dict[str, Any] | None:
    return next((p for p in curve if abs(p["loss"] - loss) < 1e-9), None)


def out_of_scope_html(out_of_scope: dict[str, Any] | None) -> str:
    """The out-of-scope paragraph, chart and tables from a cascade's ``out_of_scope`` ('' when
    the cascade does not abstain)."""
    oos = out_of_scope or {}
    if oos.get("caught") is None:
        return ""
    held = oos.get("held_out_labels") or []
    where = (
        f" They include the test texts of {len(held)} labels held out of training "
        f"(<code>data.hold_out_labels</code>; no model, the teacher included, saw them): "
        f'<span data-field="held-out">{escape(", ".join(held))}</span>.'
        if held
        else ""
    )
    intro = (
        f'<h3 id="out-of-scope">Out of scope</h3><p>Out-of-scope test texts caught (answered '
        f"<code>{escape(str(oos.get('label')))}</code>): "
        f'<strong data-field="oos-caught">{_pct(oos.get("caught"))}</strong> of '
        f"{oos.get('n', '?')}; {_pct(oos.get('escalated'))} reached the last tier.{where}"
    )
    evaluation = oos.get("evaluation")
    if not evaluation:
        return intro + "</p>"
    score, loss = oos.get("score", "max_prob"), oos.get("in_scope_loss")
    intro += (
        f" Tier {escape(str(oos.get('tier_name', oos.get('tier'))))} abstains where its "
        f"<code>{escape(str(score))}</code> score is below the threshold set for "
        f"{_pct(loss)} of in-scope dev queries (<code>route.abstain</code>).</p>"
    )
    return intro + _chart(evaluation, score) + _table(evaluation, score) + _labels(oos)


def _chart(evaluation: dict[str, Any], chosen: str) -> str:
    scores = {n: e for n, e in evaluation["scores"].items() if e.get("available") and e["curve"]}
    if not scores:
        return ""
    losses = [p["loss"] for e in scores.values() for p in e["curve"]]
    x = Axis(0.0, max(losses), "in-scope test queries lost (%)", fmt=lambda v: f"{100 * v:.0f}")
    y = Axis(0.0, 1.0, "out-of-scope test texts caught (%)", fmt=lambda v: f"{100 * v:.0f}")
    chart = Chart(
        x, y, "Out-of-scope texts caught against in-scope queries lost", height=360, key="oos"
    )
    chart.line([(0.0, 0.0), (x.hi, x.hi)], cls="ref", tip="a score that knows nothing")
    chart.vline(evaluation["headline_loss"], f"{_pct(evaluation['headline_loss'], 0)} lost")
    for i, (name, entry) in enumerate(scores.items()):
        cls = f"series s{i % SERIES}" + (" chosen-score" if name == chosen else "")
        points = [(0.0, 0.0)] + [(p["loss"], p["caught"]) for p in entry["curve"]]
        chart.line(points, cls=cls, tip=name, data={"score": name})
        label = f"{name} (in use)" if name == chosen else name
        chart.legend.append((f"s{i % SERIES}", label))
    return f'<figure class="plot" id="oos-curve">{chart.render()}</figure>'


def _table(evaluation: dict[str, Any], chosen: str) -> str:
    loss = evaluation["headline_loss"]
    rows = []
    for name, entry in evaluation["scores"].items():
        mark = ' class="chosen"' if name == chosen else ""
        if not entry.get("available"):
            rows.append(
                f'<tr data-score="{escape(name)}"{mark}><td>{escape(name)}</td>'
                f'<td colspan="5" class="aside">not available: {escape(entry.get("why", ""))}'
                "</td></tr>"
            )
            continue
        point = _at(entry["curve"], loss) or {}
        lo, hi = point.get("interval") or (None, None)
        auroc = entry.get("auroc")
        vs = entry.get("vs_max_prob")
        paired = "—"
        if vs and name != "max_prob":
            a, b = vs["interval"]
            paired = f"{100 * vs['diff']:+.1f} pt ({100 * a:+.1f} to {100 * b:+.1f})"
        rows.append(
            f'<tr data-score="{escape(name)}"{mark}><td>{escape(name)}</td>'
            f"<td>{'—' if auroc is None else f'{auroc:.3f}'}</td>"
            f'<td data-field="caught-at-headline">{_pct(point.get("caught"))}</td>'
            f"<td>{_pct(lo)} – {_pct(hi)}</td><td>{paired}</td>"
            f"<td>{_pct(point.get('caught_dev'))} at {_pct(point.get('lost_dev'))}</td></tr>"
        )
    best = evaluation.get("best")
    note = (
        f'<p class="caption">Most caught at {_pct(loss, 0)} loss: '
        f"<strong>{escape(str(best))}</strong>"
        + (" (in use)." if best == chosen else f"; in use: {escape(chosen)}.")
        + " Caught at a loss: with the threshold at that quantile of the in-scope test scores "
        "(95% bootstrap interval, in- and out-of-scope texts resampled apart; against max_prob "
        "on the same resamples). Threshold set on dev: calibrated on in-scope dev queries for "
        "that loss, as the cascade sets its own, and the in-scope test loss it really gives.</p>"
    )
    return (
        '<table class="small" id="oos-scores"><thead><tr><th>score</th><th>AUROC</th>'
        f"<th>caught at {_pct(loss, 0)} loss</th><th>95% CI</th><th>vs max_prob (paired 95% CI)"
        f"</th><th>threshold set on dev for {_pct(loss, 0)}: caught at test loss</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>" + note
    )


def _labels(oos: dict[str, Any]) -> str:
    labels = oos.get("by_label") or {}
    if len(labels) < 2:
        return ""
    rows = "".join(
        f'<tr data-label="{escape(label)}"><td>{escape(label)}</td><td>{v["n"]}</td>'
        f"<td>{_pct(v['caught'])}</td></tr>"
        for label, v in sorted(labels.items(), key=lambda kv: kv[1]["caught"])
    )
    return (
        '<table class="small" id="oos-labels"><thead><tr><th>out-of-scope texts labelled'
        "</th><th>texts</th><th>caught</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
