"""Served traffic: what the deployed cascade did on real requests, beside what its calibration
on dev promised (only with ``smallfit report --from-log``)."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import Facts
from smallfit.report.fmt import ms, pct


def traffic(f: Facts) -> str:
    t = f.traffic
    if t is None:
        return ""
    calibrated = f.cascade.dev.escalation if f.cascade is not None else None
    gap = ""
    if calibrated is not None:
        drift = t.escalation - calibrated
        gap = (
            f' against <span data-field="calibrated">{pct(calibrated, 1)}</span> calibrated on '
            f"dev ({100 * drift:+.1f} pt"
            + (
                "; a rising gap is drift: the traffic is leaving what the student learnt"
                if drift > 0.05
                else ""
            )
            + ")"
        )
    rows = "".join(
        f'<tr data-tier="{escape(name)}"><td>{escape(name)}</td><td>{count:,}</td>'
        f"<td>{pct(count / t.texts, 1)}</td>"
        f"<td>{ms(t.latency_by_tier_ms[name]['p50_ms'])}</td>"
        f"<td>{ms(t.latency_by_tier_ms[name]['p99_ms'])}</td></tr>"
        for name, count in t.by_tier.items()
    )
    return (
        '<section id="traffic"><h2>Served traffic</h2>'
        f"<p>{t.texts:,} texts answered (<code>{escape(t.source)}</code>): "
        f'<span data-field="escalation">{pct(t.escalation, 1)}</span> escalated past the first '
        f"tier{gap}. Latency p50 {ms(t.latency_ms['p50_ms'])}, p95 "
        f"{ms(t.latency_ms['p95_ms'])}, p99 {ms(t.latency_ms['p99_ms'])} (inside the server); "
        f"{t.fallbacks:,} fallbacks, {t.abstained:,} abstentions.</p>"
        '<table class="small" id="traffic-tiers"><thead><tr><th>tier</th><th>texts</th>'
        "<th>share</th><th>p50</th><th>p99</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )
