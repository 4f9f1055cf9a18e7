"""The report page: one self-contained HTML file (inline CSS, inline SVG plots, a few lines of
optional JavaScript for sorting the table), built from :class:`~smallfit.report.facts.Facts`.
Every figure is written with ``data-*`` attributes naming the candidate and field it shows."""

from __future__ import annotations

import datetime as _dt
import math
from html import escape
from typing import Any

from smallfit import __version__
from smallfit.evaluate.speed import batched_throughput
from smallfit.report.cost import HOURS_PER_MONTH, break_even, volume_grid
from smallfit.report.facts import TEACHER, Facts, per_1m, ratios
from smallfit.report.oos import out_of_scope_html
from smallfit.report.svg import Axis, Chart
from smallfit.report.uncertainty import (
    cascade_vs_teacher_html,
    ci_text,
    diff_text,
    paired_diff,
    quality_ci,
    resolution_html,
    vs_teacher_cell,
)

# -- number formats (the tests format results.json the same way) -------------------------------


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB"


def usd(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"${x:,.0f}"
    if x >= 1:
        return f"${x:,.2f}"
    return f"${x:.3g}"


def times(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}x"


def volume(v: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _p(c: dict[str, Any], threads: str, key: str = "p50_ms") -> float | None:
    row = (c.get("speed") or {}).get("threads", {}).get(threads)
    return None if not row else row.get(key)


def _all_threads(c: dict[str, Any]) -> str:
    speed = c.get("speed") or {}
    n = str(speed.get("cpu_threads_all", ""))
    threads = speed.get("threads", {})
    return n if n in threads else max(threads, key=lambda t: int(t) if t.isdigit() else 0)


def _remote(c: dict[str, Any]) -> bool:
    return bool((c.get("speed") or {}).get("remote"))


# -- sections ------------------------------------------------------------------------------------


def verdict(f: Facts) -> str:
    chosen = f.candidate(f.chosen)
    metric = f.metric.replace("_", " ")
    if chosen is None:
        reason = f.selection.get("reason") or "no candidate met the quality floor"
        return (
            f'<section id="verdict"><h2>Verdict</h2>{recommended_html(f)}'
            '<p class="verdict" data-chosen="">'
            f"No model was chosen: {escape(reason)}.</p>{resolution_html(f)}</section>"
        )
    r = ratios(f, chosen)
    cost = per_1m(chosen, f.hour_usd)
    parts = [f'<strong data-field="chosen">{escape(chosen["name"])}</strong>']
    if f.teacher is not None and chosen["name"] != TEACHER:
        teacher_cost = per_1m(f.teacher, f.hour_usd)
        paired = paired_diff(chosen, f.metric)
        parts.append(
            f' keeps <span data-field="quality_pct">{r["quality_pct"]:.1f}%</span> of the '
            f"teacher's {escape(metric)} "
            f'(<span data-field="metric">{pct(chosen["quality"][f.metric])}</span>, 95% CI '
            f'<span data-field="metric_ci">{ci_text(quality_ci(chosen, f.metric))}</span>, against '
            f"{pct(f.teacher['quality'][f.metric])}"
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
            f" was chosen: {escape(metric)} "
            f'<span data-field="metric">{pct(chosen["quality"][f.metric])}</span> (95% CI '
            f'<span data-field="metric_ci">{ci_text(quality_ci(chosen, f.metric))}</span>), '
            f"{usd(cost)} per 1M queries. {escape(str(f.selection.get('reason', '')))}."
        )
    lines = [f'<p class="verdict" data-chosen="{escape(chosen["name"])}">{"".join(parts)}</p>']
    api = f.cost_options[0] if f.cost_options and f.cost_options[0].kind == "api" else None
    if api is not None and chosen["name"] != TEACHER and cost is not None:
        lines.append(
            f'<p class="aside">For comparison: {escape(api.name)} costs about '
            f"{usd(api.per_query_usd * 1e6)} per 1M queries ({escape(api.basis)}).</p>"
        )
    if f.cascade is not None:
        t = f.cascade["test"]
        ref = (f.cascade.get("reference_accuracy") or {}).get("test")
        tiers = " → ".join(f.cascade["tiers"])
        lines.append(
            f'<p class="verdict2">With the cascade <strong>{escape(tiers)}</strong>, '
            f'<span data-field="cascade_local">{pct(1 - t["escalation"], 1)}</span> of test '
            f"queries never reach the last tier, at accuracy "
            f'<span data-field="cascade_accuracy">{pct(t["accuracy"])}</span>'
            + (f" (the last tier alone: {pct(ref)})" if ref is not None else "")
            + cascade_vs_teacher_html(f)
            + (
                f", {usd(t['cost_per_1m_usd'])} per 1M queries"
                if t.get("cost_per_1m_usd") is not None
                else ""
            )
            + ".</p>"
        )
    reason = f.selection.get("reason")
    if reason:
        lines.append(f'<p class="aside">Selection: {escape(str(reason))}.</p>')
    lines.append(resolution_html(f))
    return (
        '<section id="verdict"><h2>Verdict</h2>'
        + recommended_html(f)
        + "".join(lines)
        + "</section>"
    )


def recommended_html(f: Facts) -> str:
    """The recommended deployment first, when it is not the chosen model (the cascade, when
    the teacher was chosen and the cascade keeps a real share of queries off it)."""
    advice = f.selection.get("recommended") or {}
    name = advice.get("name")
    if not name or name == f.chosen:
        return ""
    tiers = " → ".join((f.cascade or {}).get("tiers") or [name])
    return (
        f'<p class="verdict" data-recommended="{escape(str(name))}">Recommended deployment: '
        f"<strong>the cascade {escape(tiers)}</strong>: {escape(str(advice.get('reason')))}.</p>"
    )


def pareto(f: Facts) -> str:
    rows = [c for c in f.candidates if _p(c, "1") is not None]
    sizes = [c.get("bytes_on_disk") or 0 for c in rows if not _remote(c)]
    biggest = max(sizes) if sizes else 1
    x = Axis.around(
        [_p(c, "1") for c in rows],
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
    for c in sorted(rows, key=lambda c: (_p(c, "1"), -c["quality"][f.metric])):
        if c["quality"][f.metric] > best:
            best = c["quality"][f.metric]
            envelope.append((_p(c, "1"), best))
    chart.line(envelope, cls="front-line", step=True)  # type: ignore[arg-type]
    if floor:
        chart.hline(floor, f"quality floor {pct(floor)}")
    ceiling = f.selection.get("ceiling_ms")
    if ceiling:
        chart.vline(ceiling, f"latency ceiling {ceiling:g} ms")
    for c in rows:
        size = c.get("bytes_on_disk") or 0
        r = 4 + 14 * math.sqrt(size / biggest) if not _remote(c) else 6
        cls = "mark front" if c["name"] in f.front else "mark"
        if c["name"] == f.chosen:
            cls += " chosen"
        tip = (
            f"{c['name']}: {f.metric} {pct(c['quality'][f.metric])}, p50 {ms(_p(c, '1'))}, "
            f"{mb(c.get('bytes_on_disk')) if not _remote(c) else 'behind an API'}"
        )
        chart.point(
            _p(c, "1"),
            c["quality"][f.metric],
            r=r,
            cls=cls,
            tip=tip,  # type: ignore[arg-type]
            data={"candidate": c["name"]},
            shape="diamond" if c["name"] == f.chosen else "circle",
        )
        px, _ = chart.px(_p(c, "1"), c["quality"][f.metric])  # type: ignore[arg-type]
        left = px > chart.right - 140  # near the right edge: the name goes on the left
        chart.label(
            _p(c, "1"),
            c["quality"][f.metric],
            c["name"],
            dx=-(r + 3) if left else r + 3,  # type: ignore[arg-type]
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
    local = next((c for c in f.candidates if not _remote(c)), f.candidates[0])
    allt = _all_threads(local)
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
        remote = _remote(c)
        cells = [
            ("name", c["name"], c["name"]),
            ("backend", c.get("backend", "–"), c.get("backend", "")),
            (f.metric, pct(q.get(f.metric)), q.get(f.metric)),
            ("ci95", ci_text(ci), None if not ci else ci[0]),
            ("vs_teacher", vs_teacher_cell(f, c), None if not paired else paired["diff"]),
            ("macro_f1", pct(q.get("macro_f1")), q.get("macro_f1")),
            ("teacher_agreement", pct(q.get("teacher_agreement")), q.get("teacher_agreement")),
            ("p50_1t", ms(_p(c, "1")), _p(c, "1")),
            ("p95_1t", ms(_p(c, "1", "p95_ms")), _p(c, "1", "p95_ms")),
            ("p99_1t", ms(_p(c, "1", "p99_ms")), _p(c, "1", "p99_ms")),
            ("p50_all", ms(_p(c, allt)), _p(c, allt)),
            (
                "throughput",
                _fmt(batched_throughput(c["speed"]), ",.0f"),
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


def _flat(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def latency(f: Facts) -> str:
    rows = [c for c in f.candidates if not _remote(c)]
    settings = sorted({t for c in rows for t in c["speed"]["threads"]}, key=int)
    charts, missing = [], False
    for threads in settings:
        have = [c for c in rows if threads in c["speed"]["threads"]]
        values = []
        for c in have:
            row = c["speed"]["threads"][threads]
            values += row.get("samples_ms") or [row["p50_ms"], row.get("p99_ms") or row["p50_ms"]]
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
            row = c["speed"]["threads"][threads]
            level = len(have) - 1 - i
            samples = row.get("samples_ms")
            if samples:
                jitter = [((k * 0.618) % 1 - 0.5) * 0.5 for k in range(len(samples))]
                for k, v in enumerate(samples):
                    chart.point(v, level + jitter[k], r=1.6, cls="sample")
            else:
                missing = True
            for key, cls in (("p50_ms", "q50"), ("p95_ms", "q95"), ("p99_ms", "q99")):
                if row.get(key) is not None:
                    chart.line(
                        [(row[key], level - 0.38), (row[key], level + 0.38)],
                        cls=cls,
                        tip=f"{c['name']}: {key[:3]} {ms(row[key])}",
                        data={"candidate": c["name"], "field": key},
                    )
            _, py = chart.px(chart.x.lo, level)
            chart.outside.append(
                f'<text class="row-label" x="{chart.left - 8}" y="{py + 4:.1f}" '
                f'text-anchor="end">{escape(c["name"])}</text>'
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


def cascade(f: Facts) -> str:
    if f.cascade is None:
        return (
            '<section id="cascade"><h2>Cascade</h2><p>This run has no cascade (it needs a '
            "teacher, and the teacher itself must not be the chosen model).</p></section>"
        )
    cc = f.cascade
    curve = sorted(cc["curve"], key=lambda p: 1 - p["escalation"])
    local = [1 - p["escalation"] for p in curve]
    acc = [p["accuracy"] for p in curve]
    chosen_dev = cc.get("dev") or {}
    ref = (cc.get("reference_accuracy") or {}).get("dev")
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
        "accuracy on dev (%)",
        pad=0.08,
        fmt=lambda v: f"{100 * v:.1f}",
    )
    chart = Chart(
        x,
        y,
        "Cascade trade-off on dev: share answered locally against accuracy",
        key="cascade-accuracy",
    )
    chart.line(list(zip(local, acc, strict=True)), cls="curve")
    if ref:
        chart.hline(ref, f"last tier alone {pct(ref)}")
    if chosen_dev:
        chart.point(
            1 - chosen_dev["escalation"],
            chosen_dev["accuracy"],
            r=7,
            cls="mark chosen",
            shape="diamond",
            tip=f"chosen: {pct(1 - chosen_dev['escalation'], 1)} local, "
            f"accuracy {pct(chosen_dev['accuracy'])}",
            data={"field": "chosen-point"},
        )
    svgs = [chart.render()]
    costs = [p.get("cost_per_1m_usd") for p in curve]
    if all(v is not None for v in costs) and costs:
        y2 = Axis.around(costs, "$ per 1M queries", pad=0.08, fmt=lambda v: f"{v:.3g}", floor=0.0)
        chart2 = Chart(
            x,
            y2,
            "Cascade cost per 1M queries against the share answered locally",
            height=260,
            key="cascade-cost",
        )
        chart2.line(list(zip(local, costs, strict=True)), cls="curve cost")
        if chosen_dev.get("cost_per_1m_usd") is not None:
            chart2.point(
                1 - chosen_dev["escalation"],
                chosen_dev["cost_per_1m_usd"],
                r=7,
                cls="mark chosen",
                shape="diamond",
            )
        svgs.append(chart2.render())
    rows = []
    for split in ("dev", "test"):
        p = cc.get(split)
        if not p:
            continue
        ref_split = (cc.get("reference_accuracy") or {}).get(split)
        rows.append(
            f'<tr data-split="{split}"><td>{split}</td>'
            f'<td data-field="local">{pct(1 - p["escalation"], 1)}</td>'
            f'<td data-field="accuracy">{pct(p["accuracy"])}</td><td>{pct(ref_split)}</td>'
            f"<td>{pct(p.get('abstained'), 1)}</td><td>{usd(p.get('cost_per_1m_usd'))}</td>"
            f"<td>{ms(p.get('mean_latency_ms'))}</td></tr>"
        )
    thresholds = ", ".join(f"{t:.3f}" for t in cc.get("thresholds") or [])
    oos_line = out_of_scope_html(cc)
    return (
        '<section id="cascade"><h2>Cascade</h2>'
        f"<p>Tiers <strong>{escape(' → '.join(cc['tiers']))}</strong>; a tier answers when its "
        f"{escape(str(cc.get('confidence', 'max_prob')))} clears its threshold ({thresholds}); "
        f"target <code>{escape(str(cc.get('target')))}</code>, calibrated on dev and checked "
        "once on test.</p>"
        + "".join(f'<figure class="plot">{s}</figure>' for s in svgs)
        + '<table class="small" id="cascade-points"><thead><tr><th>split</th><th>answered '
        "locally</th><th>accuracy</th><th>last tier alone</th><th>abstained</th><th>$ / 1M</th>"
        "<th>mean latency</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + oos_line
        + "</section>"
    )


def cost(f: Facts) -> str:
    options = f.cost_options
    r = f.report
    today = float(r.volume_per_month)
    marks = [today] + [today * g for g in r.growth]
    lo, hi = min(marks) / 100, max(marks) * 100
    grid = volume_grid(lo, hi)
    x = Axis(lo, hi, "queries a month (log scale)", log=True, fmt=volume)
    ys = [o.monthly(v) for o in options for v in grid]
    y = Axis.around(
        [v for v in ys if v > 0], "$ a month (log scale)", log=True, pad=0.04, fmt=lambda v: usd(v)
    )
    chart = Chart(x, y, "Monthly cost against monthly volume", height=420, key="cost")
    for i, o in enumerate(options):
        points = grid
        if o.throughput_per_s:  # the staircase's steps, exactly
            per_machine = o.throughput_per_s * 3600 * HOURS_PER_MONTH * o.utilization
            steps = [k * per_machine for k in range(1, 200) if lo < k * per_machine < hi]
            points = sorted(set(grid + steps + [s * 1.0001 for s in steps]))
        chart.line(
            [(v, o.monthly(v)) for v in points],
            cls=f"series s{i}",
            tip=o.name,
            data={"option": o.name},
        )
        chart.legend.append((f"s{i}", o.name))
    for i, (v, label) in enumerate(
        zip(marks, ["today"] + [f"{g:g}x" for g in r.growth], strict=True)
    ):
        chart.vline(v, label, cls="ref volume", dy=14 * i)
    api = options[0] if options and options[0].kind == "api" else None
    evens = []
    if api is not None:
        for o in options[1:]:
            v = break_even(o, api)
            evens.append((o, v))
            if v is not None and lo < v < hi:
                chart.point(
                    v,
                    o.monthly(v),
                    r=5,
                    cls="mark even",
                    tip=f"{o.name} breaks even with {api.name} at {volume(v)} queries a month",
                )
    head = "".join(
        f"<th>{escape(label)}</th>"
        for label in [f"today ({volume(today)})"]
        + [f"{g:g}x ({volume(today * g)})" for g in r.growth]
    )
    body = []
    for o in options:
        cells = "".join(f'<td data-volume="{v:g}">{usd(o.monthly(v))}</td>' for v in marks)
        machines = f"{o.machines(today)} machine(s) today" if o.throughput_per_s else "per query"
        body.append(
            f'<tr data-option="{escape(o.name)}"><td>{escape(o.name)}</td>{cells}'
            f"<td>{usd(o.one_off_usd)}</td><td>{escape(machines)}</td></tr>"
        )
    even_lines = "".join(
        f"<li><strong>{escape(o.name)}</strong>: "
        + (
            f'cheaper than {escape(api.name)} from about <span data-field="break_even" '  # type: ignore[union-attr]
            f'data-option="{escape(o.name)}">{volume(v)}</span> queries a month.'
            if v is not None
            else f"never cheaper than {escape(api.name)} below {volume(1e12)} queries a month."  # type: ignore[union-attr]
        )
        + "</li>"
        for o, v in evens
    )
    one = f.one_off
    assumptions = (
        f'<ul class="assumptions"><li>Self-hosting: machines like this one at '
        f"{usd(f.hour_usd)} an hour (<code>report.hour_usd</code>, else "
        f"<code>evaluate.machine_hour_usd</code>), {HOURS_PER_MONTH:.0f} hours a month, planned "
        f"at {r.utilization:.0%} of the measured batched throughput; at least one machine runs "
        "all month.</li>"
        f"<li>{escape(f.api_basis)}.</li>"
        f"<li>One-off: {one.get('machine_seconds', 0) / 3600:.2f} machine-hours of teacher "
        f"training, labelling, student training and compression ({usd(one.get('machine_usd'))})"
        + (
            f" plus {usd(one.get('labelling_api_usd'))} of API labelling"
            if one.get("labelling_api_usd")
            else ""
        )
        + f", spread over {r.amortize_months:g} months in the monthly figures.</li>"
        f"<li>Today's volume: {volume(today)} queries a month "
        "(<code>report.volume_per_month</code>).</li></ul>"
    )
    return (
        '<section id="cost"><h2>Cost and growth</h2>'
        f'<figure class="plot">{chart.render()}</figure>'
        f'<table class="small" id="cost-table"><thead><tr><th>option</th>{head}<th>one-off</th>'
        f"<th>capacity</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        + (f"<ul>{even_lines}</ul>" if even_lines else "")
        + assumptions
        + "</section>"
    )


def weaker(f: Facts) -> str:
    chosen = f.candidate(f.chosen)
    if chosen is None:
        return ""
    mine = chosen["quality"].get("per_class") or {}
    theirs = ((f.teacher or {}).get("quality") or {}).get("per_class") or {}
    if not mine:
        return (
            '<section id="weaker"><h2>Where it is weaker</h2><p>No per-class figures in '
            "results.json.</p></section>"
        )
    rows = []
    for label, m in mine.items():
        t = theirs.get(label) or {}
        gap = None if t.get("f1") is None else m["f1"] - t["f1"]
        rows.append((label, m, t, gap))
    rows.sort(key=lambda r: (r[3] if r[3] is not None else r[1]["f1"], r[0]))
    k = f.report.worst_classes

    def tr(label: str, m: dict[str, Any], t: dict[str, Any], gap: float | None) -> str:
        width = max(0.0, min(1.0, m["f1"])) * 100
        return (
            f'<tr data-label="{escape(label)}"><td>{escape(label)}</td>'
            f'<td data-field="f1">{pct(m["f1"], 1)}'
            f'<span class="bar" style="width:{width:.0f}px"></span></td>'
            f"<td>{pct(t.get('f1'), 1)}</td>"
            f'<td class="{"neg" if gap is not None and gap < 0 else ""}">'
            f"{'–' if gap is None else f'{100 * gap:+.1f} pt'}</td>"
            f"<td>{pct(m.get('precision'), 1)}</td><td>{pct(m.get('recall'), 1)}</td>"
            f"<td>{m.get('support', '–')}</td></tr>"
        )

    head = (
        "<thead><tr><th>class</th><th>F1 (chosen)</th><th>F1 (teacher)</th><th>gap</th>"
        "<th>precision</th><th>recall</th><th>test rows</th></tr></thead>"
    )
    worst = "".join(tr(*r) for r in rows[:k])
    rest = "".join(tr(*r) for r in rows[k:])
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
        pairs = (
            f"<h3>Most confused pairs ({escape(chosen['name'])}, test)</h3>"
            '<table class="small" id="confusions"><thead><tr><th>gold label</th>'
            "<th>predicted</th><th>texts</th><th>examples</th></tr></thead>"
            f"<tbody>{items}</tbody></table>"
        )
    elif f.confusion_note:
        pairs = f'<p class="caption">{escape(f.confusion_note)}</p>'
    return (
        '<section id="weaker"><h2>Where it is weaker</h2>'
        f"<p>Per-class F1 of <strong>{escape(chosen['name'])}</strong> on test against the "
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


def lineage(f: Facts) -> str:
    items = []
    for c in f.candidates:
        lin = c.get("lineage") or {}
        facts = []
        for key in (
            "base",
            "teacher",
            "recipe",
            "trained_on",
            "train_examples",
            "tiers",
            "target",
            "compressed_from",
        ):
            if lin.get(key) not in (None, "", []):
                value = lin[key]
                value = " → ".join(value) if isinstance(value, list) else value
                facts.append(
                    f"<dt>{escape(key.replace('_', ' '))}</dt><dd>{escape(str(value))}</dd>"
                )
        training = lin.get("training") or {}
        if training:
            bits = [
                f"{k.replace('_', ' ')} {training[k]}"
                for k in ("epochs", "steps", "seconds", "best_dev_agreement", "stopped_by")
                if training.get(k) is not None
            ]
            cfg = training.get("config") or {}
            bits += [f"{k} {cfg[k]}" for k in ("lr", "batch_size", "max_length") if k in cfg]
            if bits:
                facts.append(f"<dt>training</dt><dd>{escape(', '.join(bits))}</dd>")
        for i, step in enumerate(lin.get("compression") or [], 1):
            conf = ", ".join(
                f"{k} ({_flat(v)})" if isinstance(v, dict) else f"{k} {v}"
                for k, v in step.items()
                if k not in ("method", "metrics", "seconds") and v is not None
            )
            metrics = step.get("metrics") or {}
            checks = ", ".join(
                f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
            facts.append(
                f"<dt>step {i}: {escape(str(step.get('method')))}</dt>"
                f"<dd>{escape(conf)}{' — ' + escape(checks) if checks else ''}</dd>"
            )
        items.append(
            f'<div class="lineage" data-candidate="{escape(c["name"])}"><h3>{escape(c["name"])}'
            f" <small>{escape(str(c.get('backend', '')))}</small></h3><dl>{''.join(facts)}</dl>"
            "</div>"
        )
    env = f.results.get("environment") or {}
    settings = ", ".join(sorted({t for c in f.candidates for t in c["speed"]["threads"]}, key=int))
    flags = ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v)
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
    env_rows = [
        ("CPU", f"{env.get('cpu_model', '?')} ({flags})"),
        (
            "cores",
            f"{env.get('logical_cores', '?')} logical, {env.get('usable_cores', '?')} usable",
        ),
        ("threads", f"torch {env.get('torch_threads', '?')}; latency at {settings} thread(s)"),
        ("python", f"{env.get('python', '?')} on {env.get('platform', '?')}"),
        ("packages", packages),
        ("measured", str(env.get("timestamp", "?"))),
    ]
    return (
        '<section id="lineage"><h2>Lineage and environment</h2>'
        + '<div class="lineages">'
        + "".join(items)
        + '</div><table class="small" id="environment"><tbody>'
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in env_rows)
        + "</tbody></table></section>"
    )


# -- the page ------------------------------------------------------------------------------------

CSS = """
:root{--ink:#1d2330;--muted:#5b6577;--line:#d9dee7;--bg:#fff;--accent:#1f6feb;--good:#1a7f37;
--bad:#cf222e;--s0:#cf222e;--s1:#8250df;--s2:#1f6feb;--s3:#1a7f37;--s4:#bf8700;--s5:#57606a;
--s6:#0a7ea4}
*{box-sizing:border-box}body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--ink);background:var(--bg);margin:0}main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:1px solid var(--line);
padding-bottom:4px;margin-top:36px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:var(--muted);font-size:13px}.verdict{font-size:18px;line-height:1.45}
.verdict2{font-size:16px}.aside,.caption{color:var(--muted);font-size:13px}
nav a{margin-right:12px;font-size:13px}code{font-size:13px;background:#f3f5f8;padding:0 3px}
.table-wrap{overflow-x:auto}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa;cursor:pointer}
tr.chosen td{background:#eef5ff;font-weight:600}tr.chosen td:first-child::before{content:"◆ "}
tr.front:not(.chosen) td:first-child::before{content:"● "}
#per-class td:first-child,#confusions td,#environment td{white-space:normal}
#environment td,#environment th{text-align:left}
#confusions td,#confusions th{vertical-align:top;text-align:left}
.examples{margin:0;padding-left:16px}
td.neg{color:var(--bad)}.bar{display:inline-block;height:8px;background:var(--accent);
opacity:.35;margin-left:6px;vertical-align:middle}
figure.plot{margin:12px 0}svg.chart{max-width:100%;height:auto;font-size:12px}
svg .grid{stroke:#eef0f4}svg .frame{stroke:#b8c0cc}
svg .tick,svg .ref-label,svg .legend{fill:var(--muted)}
svg .axis-label{fill:var(--ink);font-size:13px}svg .mark{fill:#9aa5b5;fill-opacity:.55;
stroke:#57606a}svg .mark.front{fill:var(--accent);fill-opacity:.55;stroke:var(--accent)}
svg .mark.chosen{fill:var(--good);fill-opacity:.9;stroke:#0b4f22;stroke-width:2}
svg .mark.even{fill:#fff;stroke:var(--ink);stroke-width:2}
svg .front-line{stroke:var(--accent);stroke-width:1.5;stroke-dasharray:4 3}
svg .point-label{fill:var(--ink);font-size:11px}svg .row-label{fill:var(--ink);font-size:12px}
svg .ref{stroke:var(--bad);stroke-dasharray:5 4}svg .ref.volume{stroke:var(--muted)}
svg .sample{fill:var(--accent);fill-opacity:.35}svg .q50{stroke:var(--ink);stroke-width:2.5}
svg .q95,svg .q99{stroke:var(--bad);stroke-width:1.5;stroke-dasharray:3 2}
svg .curve{stroke:var(--accent);stroke-width:2}svg .curve.cost{stroke:var(--s4)}
svg .series{stroke-width:2.2}svg .series.s1{stroke-dasharray:8 3}
svg .series.s3{stroke-dasharray:2 2}svg .s0{stroke:var(--s0)}svg .s1{stroke:var(--s1)}
svg .s2{stroke:var(--s2)}svg .s3{stroke:var(--s3)}svg .s4{stroke:var(--s4)}svg .s5{stroke:var(--s5)}
svg .s6{stroke:var(--s6)}svg .series.chosen-score{stroke-width:4}
.lineages{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:8px 24px}
.lineage dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;font-size:13px;margin:0}
.lineage dt{color:var(--muted)}.lineage dd{margin:0;overflow-wrap:anywhere}
footer{color:var(--muted);font-size:12px;margin:40px 0 8px}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    var dir = 1;
    function sort() {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var num = th.getAttribute("data-type") === "num";
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort");
        var y = b.cells[col].getAttribute("data-sort");
        if (num) {
          x = x === "" ? Infinity : parseFloat(x);
          y = y === "" ? Infinity : parseFloat(y);
        }
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      dir = -dir;
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
});
"""


def render(f: Facts) -> str:
    """The whole page."""
    name = f.run_dir.resolve().name
    env = f.results.get("environment") or {}
    sections = [verdict(f), pareto(f), latency(f), cascade(f), cost(f), weaker(f), lineage(f)]
    nav = "".join(
        f'<a href="#{i}">{t}</a>'
        for i, t in (
            ("verdict", "Verdict"),
            ("pareto", "Candidates"),
            ("latency", "Latency"),
            ("cascade", "Cascade"),
            ("cost", "Cost"),
            ("weaker", "Weaker"),
            ("lineage", "Lineage"),
        )
    )
    notes = "".join(f'<p class="aside">Note: {escape(n)}</p>' for n in f.notes)
    measured = str(env.get("timestamp", ""))[:10]
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>smallfit report: {escape(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Which model should we run, and what will it cost?</h1>"
        f'<p class="meta">Run <code>{escape(str(f.run_dir))}</code> · {len(f.candidates)} '
        f"candidates measured {escape(measured)} on {escape(str(env.get('cpu_model', '?')))} "
        f"({env.get('usable_cores', '?')} cores) · report written {now} by smallfit "
        f"{__version__} from the run's saved results</p><nav>{nav}</nav>{notes}"
        + "".join(sections)
        + "<footer>Everything on this page is read from the run directory (results.json, "
        "cascade.json, stages.json, results/); rebuild it with <code>smallfit report "
        f"{escape(str(f.run_dir))}</code>.</footer></main><script>{SCRIPT}</script></body></html>\n"
    )
