"""Selection: the smallest candidate over the quality floor and under the latency ceiling,
with the Pareto front and the comparison table.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "SelectConfig": "smallfit.select.config",
    "parse_floor": "smallfit.select.config",
    "ABBREV": "smallfit.select.selection",
    "Selection": "smallfit.select.selection",
    "format_table": "smallfit.select.selection",
    "paired_diff": "smallfit.select.selection",
    "pareto_front": "smallfit.select.selection",
    "resolution": "smallfit.select.selection",
    "select": "smallfit.select.selection",
    "selection_json": "smallfit.select.selection",
    "vs_teacher": "smallfit.select.selection",
}

__all__ = [
    "ABBREV",
    "SelectConfig",
    "Selection",
    "format_table",
    "paired_diff",
    "pareto_front",
    "parse_floor",
    "resolution",
    "select",
    "selection_json",
    "vs_teacher",
]

__getattr__ = lazy_exports(__name__, _LAZY)
