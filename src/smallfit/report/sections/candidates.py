"""Candidates: the quality-latency-size chart (Pareto front) and the sortable table."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from smallfit.evaluate.speed import batched_throughput
from smallfit.report.facts import TEACHER, Facts, per_1m, ratios
from smallfit.report.fmt import (
    all_threads,
    fmt,
    is_remote,
    latency_ms,
    mb,
    ms,
    pct,
    times,
    usd,
)
from smallfit.report.svg import Axis, Chart
from smallfit.report.uncertainty import (
    ci_text,
    paired_diff,
    quality_ci,
    vs_teacher_cell,
)


def _p50(c: dict[str, Any]) -> float:
    value = latency_ms(c, "1")
    assert value is not None  # the chart's rows all have one
    return value


def pareto(f: Facts) -> str:
    rows = [c for c in f.candidates if latency_ms(c, "1") is not None]
    p50 = _p50
    sizes = [c.get("bytes_on_disk") or 0 for c in rows if not is_remote(c)]
    biggest = max(sizes) if sizes else 1
    x = Axis.around(
        [p50(c) for c in rows],
        "batch-1 p50 latency, 1 thread (ms, log scale)",
        log=True,
        pad=0.12,
        fmt=lambda v: f"{v:g}",
    )
    quality = [c["quality"][f.metric] for c in rows]
    floor = f.selection.get("floor")
    y = Axis.around(
        quality + ([floor] if floor else []),
        f"{f.metric} on test (%)",
        pad=0.12,
        fmt=lambda v: f"{100 * v:.1f}",
    )
    chart = Chart(x, y, "Quality against latency; marker area = size on disk", key="pareto")
    envelope, best = [], -math.inf  # the quality-latency front: each point beats all faster
    for c in sorted(rows, key=lambda c: (p50(c), -c["quality"][f.metric])):
        if c["quality"][f.metric] > best:
            best = c["quality"][f.metric]
            envelope.append((p50(c), best))
    chart.line(envelope, cls="front-line", step=True)
    if floor:
        chart.hline(floor, f"quality floor {pct(floor)}")
    ceiling = f.selection.get("ceiling_ms")
    if ceiling:
        chart.vline(ceiling, f"latency ceiling {ceiling:g} ms")
    for c in rows:
        size = c.get("bytes_on_disk") or 0
        r = 4 + 14 * math.sqrt(size / biggest) if not is_remote(c) else 6
        cls = "mark front" if c["name"] in f.front else "mark"
        if c["name"] == f.chosen:
            cls += " chosen"
        tip = (
            f"{c['name']}: {f.metric} {pct(c['quality'][f.metric])}, p50 {ms(p50(c))}, "
            f"{mb(c.get('bytes_on_disk')) if not is_remote(c) else 'behind an API'}"
        )
        chart.point(
            p50(c),
            c["quality"][f.metric],
            r=r,
            cls=cls,
            tip=tip,
            data={"candidate": c["name"]},
            shape="diamond" if c["name"] == f.chosen else "circle",
        )
        px, _ = chart.px(p50(c), c["quality"][f.metric])
        left = px > chart.right - 140  # near the right edge: the name goes on the left
        chart.label(
            p50(c),
            c["quality"][f.metric],
            c["name"],
            dx=-(r + 3) if left else r + 3,
            dy=4,
            anchor="end" if left else "start",
        )
    note = (
        '<p class="caption">Blue: on the Pareto front (no other candidate is at least as '
        f"good on {escape(f.metric)}, latency and size and better on one); the dashed staircase "
        f"is the best {escape(f.metric)} reachable at each latency; the green diamond is the "
        "chosen model. Hover a marker for its numbers.</p>"
    )
    return (
        '<section id="pareto"><h2>Candidates</h2>'
        + f'<figure class="plot">{chart.render()}</figure>'
        + note
        + candidates_table(f)
        + "</section>"
    )


def candidates_table(f: Facts) -> str:
    local = next((c for c in f.candidates if not is_remote(c)), f.candidates[0])
    allt = all_threads(local)
    head = [
        ("name", "text"),
        ("backend", "text"),
        (f.metric.replace("_", " "), "num"),
        ("95% CI", "num"),
        ("vs teacher", "num"),
        ("macro F1", "num"),
        ("teacher agreement", "num"),
        ("p50 1t", "num"),
        ("p95 1t", "num"),
        ("p99 1t", "num"),
        (f"p50 {allt}t", "num"),
        ("texts/s", "num"),
        ("size", "num"),
        ("peak RSS", "num"),
        ("$ / 1M", "num"),
        ("x faster", "num"),
        ("x smaller", "num"),
    ]
    out = ['<div class="table-wrap"><table id="candidates" class="sortable"><thead><tr>']
    out += [f'<th data-type="{t}" tabindex="0">{escape(h)}</th>' for h, t in head]
    out.append("</tr></thead><tbody>")
    for c in f.candidates:
        q, r = c["quality"], ratios(f, c)
        ci = quality_ci(c, f.metric)
        paired = None if c["name"] == TEACHER else paired_diff(c, f.metric)
        remote = is_remote(c)
        cells = [
            ("name", c["name"], c["name"]),
            ("backend", c.get("backend", "–"), c.get("backend", "")),
            (f.metric, pct(q.get(f.metric)), q.get(f.metric)),
            ("ci95", ci_text(ci), None if not ci else ci[0]),
            ("vs_teacher", vs_teacher_cell(f, c), None if not paired else paired["diff"]),
            ("macro_f1", pct(q.get("macro_f1")), q.get("macro_f1")),
            ("teacher_agreement", pct(q.get("teacher_agreement")), q.get("teacher_agreement")),
            ("p50_1t", ms(latency_ms(c, "1")), latency_ms(c, "1")),
            ("p95_1t", ms(latency_ms(c, "1", "p95_ms")), latency_ms(c, "1", "p95_ms")),
            ("p99_1t", ms(latency_ms(c, "1", "p99_ms")), latency_ms(c, "1", "p99_ms")),
            ("p50_all", ms(latency_ms(c, allt)), latency_ms(c, allt)),
            (
                "throughput",
                fmt(batched_throughput(c["speed"]), ",.0f"),
                batched_throughput(c["speed"]),
            ),
            (
                "bytes_on_disk",
                "API" if remote else mb(c.get("bytes_on_disk")),
                c.get("bytes_on_disk"),
            ),
            ("peak_rss", mb(c["speed"].get("peak_rss_bytes")), c["speed"].get("peak_rss_bytes")),
            ("cost", usd(per_1m(c, f.hour_usd)), per_1m(c, f.hour_usd)),
            ("speedup", times(r["speedup_p50_1t"]), r["speedup_p50_1t"]),
            ("size_ratio", times(r["size_ratio"]), r["size_ratio"]),
        ]
        classes = []
        if c["name"] == f.chosen:
            classes.append("chosen")
        if c["name"] in f.front:
            classes.append("front")
        out.append(f'<tr data-candidate="{escape(c["name"])}" class="{" ".join(classes)}">')
        for field, text, value in cells:
            sort = "" if value is None else escape(str(value), quote=True)
            out.append(f'<td data-field="{field}" data-sort="{sort}">{escape(str(text))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    batch = local["speed"].get("throughput_batch", 32)
    out.append(
        '<p class="caption">Latency: one text at a time, 1 thread and '
        f"{escape(allt)} threads; texts/s: batches of {batch} on all threads; size: bytes on "
        f"disk; $ / 1M: a machine-hour of {usd(f.hour_usd)} at that throughput (an API model: "
        "its measured tokens at its prices; the cascade: its tiers weighted by the share of "
        f"queries each ran on). 95% CI: the {escape(f.metric.replace('_', ' '))}'s percentile "
        "bootstrap interval over the test texts; vs teacher: its difference from the "
        "teacher's in points, with the paired 95% interval (the same resampled texts for "
        "both). Ratios are against the teacher. Rows marked ◆ chosen, ● Pareto "
        "front. Click a column to sort.</p>"
    )
    return "".join(out)
