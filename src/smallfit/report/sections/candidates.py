"""Candidates: the quality-latency-size chart (Pareto front) and the sortable table."""

from __future__ import annotations

import math
from html import escape

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
    vs_teacher_cell,
)
from smallfit.run.records import CandidateResult


def _p50(c: CandidateResult) -> float:
    value = latency_ms(c, "1")
    assert value is not None  # the chart's rows all have one
    return value


def pareto(f: Facts) -> str:
    rows = [
        c
        for c in f.candidates
        if latency_ms(c, "1") is not None and c.quality.value(f.metric) is not None
    ]
    p50 = _p50

    def quality_of(c: CandidateResult) -> float:
        value = c.quality.value(f.metric)
        assert value is not None  # the chart's rows all have one
        return value

    sizes = [c.bytes_on_disk for c in rows if not is_remote(c)]
    biggest = max(sizes) if sizes else 1
    x = Axis.around(
        [p50(c) for c in rows],
        "batch-1 p50 latency, 1 thread (ms, log scale)",
        log=True,
        pad=0.12,
        fmt=lambda v: f"{v:g}",
    )
    quality = [quality_of(c) for c in rows]
    floor = None if f.selection is None else f.selection.floor
    y = Axis.around(
        quality + ([floor] if floor else []),
        f"{f.metric} on test (%)",
        pad=0.12,
        fmt=lambda v: f"{100 * v:.1f}",
    )
    chart = Chart(x, y, "Quality against latency; marker area = size on disk", key="pareto")
    envelope, best = [], -math.inf  # the quality-latency front: each point beats all faster
    for c in sorted(rows, key=lambda c: (p50(c), -quality_of(c))):
        if quality_of(c) > best:
            best = quality_of(c)
            envelope.append((p50(c), best))
    chart.line(envelope, cls="front-line", step=True)
    if floor:
        chart.hline(floor, f"quality floor {pct(floor)}")
    ceiling = None if f.selection is None else f.selection.ceiling_ms
    if ceiling:
        chart.vline(ceiling, f"latency ceiling {ceiling:g} ms")
    for c in rows:
        size = c.bytes_on_disk
        r = 4 + 14 * math.sqrt(size / biggest) if not is_remote(c) else 6
        cls = "mark front" if c.name in f.front else "mark"
        if c.name == f.chosen:
            cls += " chosen"
        tip = (
            f"{c.name}: {f.metric} {pct(quality_of(c))}, p50 {ms(p50(c))}, "
            f"{mb(c.bytes_on_disk) if not is_remote(c) else 'behind an API'}"
        )
        chart.point(
            p50(c),
            quality_of(c),
            r=r,
            cls=cls,
            tip=tip,
            data={"candidate": c.name},
            shape="diamond" if c.name == f.chosen else "circle",
        )
        px, _ = chart.px(p50(c), quality_of(c))
        left = px > chart.right - 140  # near the right edge: the name goes on the left
        chart.label(
            p50(c),
            quality_of(c),
            c.name,
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
        q, r = c.quality, ratios(f, c)
        ci = c.quality.interval(f.metric)
        paired = None if c.name == TEACHER else c.quality.paired(f.metric)
        remote = is_remote(c)
        cells = [
            ("name", c.name, c.name),
            ("backend", c.backend, c.backend),
            (f.metric, pct(q.value(f.metric)), q.value(f.metric)),
            ("ci95", ci_text(ci), None if not ci else ci[0]),
            ("vs_teacher", vs_teacher_cell(f, c), None if paired is None else paired.diff),
            ("macro_f1", pct(q.macro_f1), q.macro_f1),
            ("teacher_agreement", pct(q.teacher_agreement), q.teacher_agreement),
            ("p50_1t", ms(latency_ms(c, "1")), latency_ms(c, "1")),
            ("p95_1t", ms(latency_ms(c, "1", "p95_ms")), latency_ms(c, "1", "p95_ms")),
            ("p99_1t", ms(latency_ms(c, "1", "p99_ms")), latency_ms(c, "1", "p99_ms")),
            ("p50_all", ms(latency_ms(c, allt)), latency_ms(c, allt)),
            (
                "throughput",
                fmt(c.speed.throughput_per_s, ",.0f"),
                c.speed.throughput_per_s,
            ),
            (
                "bytes_on_disk",
                "API" if remote else mb(c.bytes_on_disk),
                c.bytes_on_disk,
            ),
            ("peak_rss", mb(c.speed.peak_rss_bytes), c.speed.peak_rss_bytes),
            ("cost", usd(per_1m(c, f.hour_usd)), per_1m(c, f.hour_usd)),
            ("speedup", times(r["speedup_p50_1t"]), r["speedup_p50_1t"]),
            ("size_ratio", times(r["size_ratio"]), r["size_ratio"]),
        ]
        classes = []
        if c.name == f.chosen:
            classes.append("chosen")
        if c.name in f.front:
            classes.append("front")
        out.append(f'<tr data-candidate="{escape(c.name)}" class="{" ".join(classes)}">')
        for field, text, value in cells:
            sort = "" if value is None else escape(str(value), quote=True)
            out.append(f'<td data-field="{field}" data-sort="{sort}">{escape(str(text))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    batch = 32 if local.speed.throughput_batch is None else local.speed.throughput_batch
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
