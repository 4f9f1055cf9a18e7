"""The report: one self-contained HTML page that answers "which model should we run, and what
will it cost?", plus a model card beside each saved model, built only from a run directory's
saved results (no model is loaded, nothing is measured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.lazy import lazy_exports
from smallfit.run.layout import RunDir

REPORT = RunDir(".").report_file.name

_LAZY = {
    "ReportConfig": "smallfit.report.config",
    "Facts": "smallfit.report.facts",
    "load_facts": "smallfit.report.facts",
    "model_card": "smallfit.report.card",
    "write_model_cards": "smallfit.report.card",
}

__all__ = [
    "REPORT",
    "Facts",
    "ReportConfig",
    "load_facts",
    "model_card",
    "write_model_cards",
    "write_report",
]

__getattr__ = lazy_exports(__name__, _LAZY)


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    cards: bool = True,
    overrides: dict[str, Any] | None = None,
    traffic_log: str | Path | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and the model cards; the page's path.
    ``overrides`` replace fields of the run's ``report`` config (prices, volume);
    ``traffic_log`` (``smallfit serve --traffic-log``) adds a section on served traffic.

    Everything is read and checked before anything is written: a missing or corrupt results
    file raises :class:`~smallfit.errors.SmallfitError` naming it, and leaves any earlier
    report as it was."""
    from smallfit.models.base import write_text
    from smallfit.report.card import write_model_cards
    from smallfit.report.facts import load_facts
    from smallfit.report.page import render

    facts = load_facts(run_dir, overrides=overrides, traffic_log=traffic_log)
    html = render(facts)
    path = Path(out) if out is not None else RunDir(run_dir).report_file
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, html)
    if cards:
        write_model_cards(facts)
    return path
