"""Latency: each candidate's batch-1 latency distribution per thread count."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import Facts
from smallfit.report.fmt import (
    is_remote,
    ms,
)
from smallfit.report.svg import Axis, Chart


def latency(f: Facts) -> str:
    rows = [c for c in f.candidates if not is_remote(c)]
    settings = sorted({t for c in rows for t in c.speed.threads}, key=int)
    charts, missing = [], False
    for threads in settings:
        have = [c for c in rows if threads in c.speed.threads]
        values: list[float] = []
        for c in have:
            row = c.speed.threads[threads]
            values += row.samples_ms or [row.p50_ms, row.p99_ms or row.p50_ms]
        x = Axis.around(
            values,
            f"batch-1 latency, {threads} thread(s) (ms, log scale)",
            log=True,
            pad=0.05,
            fmt=lambda v: f"{v:g}",
        )
        y = Axis(-0.6, len(have) - 0.4, "", tick_list=[], fmt=lambda v: "")
        height = 70 + 34 * len(have)
        chart = Chart(
            x,
            y,
            f"Latency distribution per candidate, {threads} thread(s)",
            height=height,
            margin=(12, 24, 48, 170),
            key=f"latency-{threads}",
        )
        for i, c in enumerate(have):
            row = c.speed.threads[threads]
            level = len(have) - 1 - i
            samples = row.samples_ms
            if samples:
                jitter = [((k * 0.618) % 1 - 0.5) * 0.5 for k in range(len(samples))]
                for k, v in enumerate(samples):
                    chart.point(v, level + jitter[k], r=1.6, cls="sample")
            else:
                missing = True
            for key, cls in (("p50_ms", "q50"), ("p95_ms", "q95"), ("p99_ms", "q99")):
                value = getattr(row, key)
                if value is not None:
                    chart.line(
                        [(value, level - 0.38), (value, level + 0.38)],
                        cls=cls,
                        tip=f"{c.name}: {key[:3]} {ms(value)}",
                        data={"candidate": c.name, "field": key},
                    )
            _, py = chart.px(chart.x.lo, level)
            chart.outside.append(
                f'<text class="row-label" x="{chart.left - 8}" y="{py + 4:.1f}" '
                f'text-anchor="end">{escape(c.name)}</text>'
            )
        charts.append(chart)
    svgs = [chart.render() for chart in charts]
    note = (
        " This run's results hold percentiles only (no samples): re-run the evaluation to see "
        "each distribution."
        if missing
        else ""
    )
    return (
        '<section id="latency"><h2>Latency</h2><p class="caption">Each dot is one timed query '
        "(one text, the model already loaded); the bars mark p50 (solid), p95 and p99 (dashed)."
        f"{note}</p>" + "".join(f'<figure class="plot">{s}</figure>' for s in svgs) + "</section>"
    )
