"""The report page: its sections (:mod:`smallfit.report.sections`) in order, with the style
sheet and the table-sorting script (package data in ``report/static``) inlined, so the page is
one self-contained file."""

from __future__ import annotations

import datetime as _dt
from functools import cache
from html import escape
from importlib.resources import files

from smallfit import __version__
from smallfit.report.facts import Facts
from smallfit.report.sections.candidates import pareto
from smallfit.report.sections.cascade import cascade
from smallfit.report.sections.cost import cost
from smallfit.report.sections.latency import latency
from smallfit.report.sections.lineage import lineage
from smallfit.report.sections.traffic import traffic
from smallfit.report.sections.verdict import verdict
from smallfit.report.sections.weaker import weaker


@cache
def static(name: str) -> str:
    """A file of ``smallfit/report/static`` (the page's CSS and JavaScript)."""
    return files("smallfit.report").joinpath("static", name).read_text("utf-8")


def render(f: Facts) -> str:
    """The whole page."""
    name = f.run_dir.resolve().name
    env = f.results.environment
    sections = [verdict(f), traffic(f), pareto(f), latency(f), cascade(f), cost(f), weaker(f)]
    sections.append(lineage(f))
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
        f"<title>smallfit report: {escape(name)}</title><style>{static('report.css')}</style>"
        "</head><body><main>"
        f"<h1>Which model should we run, and what will it cost?</h1>"
        f'<p class="meta">Run <code>{escape(str(f.run_dir))}</code> · {len(f.candidates)} '
        f"candidates measured {escape(measured)} on {escape(str(env.get('cpu_model', '?')))} "
        f"({env.get('usable_cores', '?')} cores) · report written {now} by smallfit "
        f"{__version__} from the run's saved results</p><nav>{nav}</nav>{notes}"
        + "".join(sections)
        + "<footer>Everything on this page is read from the run directory (results.json, "
        "cascade.json, stages.json, results/); rebuild it with <code>smallfit report "
        f"{escape(str(f.run_dir))}</code>.</footer></main><script>{static('report.js')}</script></body></html>\n"
    )
