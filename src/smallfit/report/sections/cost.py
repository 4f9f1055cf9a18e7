"""Cost: dollars per million queries and per month as volume grows, and break-even points."""

from __future__ import annotations

from html import escape

from smallfit.report.cost import HOURS_PER_MONTH, break_even, volume_grid
from smallfit.report.facts import Facts
from smallfit.report.fmt import (
    usd,
    volume,
)
from smallfit.report.svg import Axis, Chart


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
            even = break_even(o, api)
            evens.append((o, even))
            if even is not None and lo < even < hi:
                chart.point(
                    even,
                    o.monthly(even),
                    r=5,
                    cls="mark even",
                    tip=f"{o.name} breaks even with {api.name} at {volume(even)} queries a month",
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
