"""Static SVG charts for the report: axes (linear or log) with tidy ticks, points, lines, bands
and reference lines. No JavaScript and no plotting library: the page renders the same with
scripts off, and every mark carries its numbers in a ``<title>`` (a tooltip) and ``data-*``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

Format = Callable[[float], str]


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def nice_step(span: float, count: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``count`` intervals over ``span``."""
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


@dataclass
class Axis:
    """One axis: its range, scale and how its ticks are written."""

    lo: float
    hi: float
    label: str
    log: bool = False
    fmt: Format = _num
    ticks: int = 5
    tick_list: list[float] | None = None
    """Ticks to draw instead of computed ones (a categorical axis: one per row)."""

    def __post_init__(self) -> None:
        if self.log:
            self.lo, self.hi = max(self.lo, 1e-12), max(self.hi, 1e-12)
        if self.hi <= self.lo:
            pad = abs(self.lo) * 0.1 or 1.0
            self.lo, self.hi = (
                (self.lo / 2, self.lo * 2) if self.log else (self.lo - pad, self.hi + pad)
            )

    @classmethod
    def around(
        cls,
        values: Iterable[float],
        label: str,
        *,
        log: bool = False,
        pad: float = 0.06,
        fmt: Format = _num,
        floor: float | None = None,
        ceil: float | None = None,
    ) -> Axis:
        """An axis spanning ``values`` with a margin (in log space for a log axis)."""
        vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
        if not vals:
            vals = [1.0] if log else [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        if log:
            a, b = math.log10(lo), math.log10(hi)
            m = max((b - a) * pad, 0.05)
            lo, hi = 10 ** (a - m), 10 ** (b + m)
        else:
            m = (hi - lo) * pad or (abs(hi) * pad or 0.5)
            lo, hi = lo - m, hi + m
        if floor is not None:
            lo = max(lo, floor)
        if ceil is not None:
            hi = min(hi, ceil)
        return cls(lo, hi, label, log=log, fmt=fmt)

    def unit(self, value: float) -> float:
        """``value``'s place along the axis, 0 at ``lo`` and 1 at ``hi``."""
        if self.log:
            value = max(value, 1e-12)
            return (math.log10(value) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo)
            )
        return (value - self.lo) / (self.hi - self.lo)

    def tick_values(self) -> list[float]:
        if self.tick_list is not None:
            return list(self.tick_list)
        if self.log:
            a, b = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            mults = (1, 2, 5) if b - a <= 3 else (1,)
            out = [m * 10.0**e for e in range(a, b + 1) for m in mults]
        else:
            step = nice_step(self.hi - self.lo, self.ticks)
            start = math.ceil(self.lo / step) * step
            out = [start + i * step for i in range(int((self.hi - start) / step + 1e-9) + 1)]
        return [v for v in out if self.lo - 1e-12 <= v <= self.hi + 1e-12]


@dataclass
class Chart:
    """A chart of ``width`` x ``height`` pixels with a plot area inside the margins; marks are
    added in data coordinates and clipped to the plot area."""

    x: Axis
    y: Axis
    title: str
    width: int = 980
    height: int = 400
    margin: tuple[int, int, int, int] = (16, 24, 52, 72)  # top, right, bottom, left
    css_class: str = "chart"
    marks: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    """Marks drawn over the whole chart, not clipped to the plot area (row labels)."""
    legend: list[tuple[str, str]] = field(default_factory=list)
    key: str = "chart"
    """A name unique on the page (the plot area's clip path is named after it)."""

    @property
    def left(self) -> float:
        return self.margin[3]

    @property
    def right(self) -> float:
        return self.width - self.margin[1]

    @property
    def top(self) -> float:
        return self.margin[0]

    @property
    def bottom(self) -> float:
        return self.height - self.margin[2]

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.left + self.x.unit(x) * (self.right - self.left),
            self.bottom - self.y.unit(y) * (self.bottom - self.top),
        )

    def point(
        self,
        x: float,
        y: float,
        *,
        r: float = 5,
        cls: str = "mark",
        tip: str = "",
        data: dict[str, object] | None = None,
        shape: str = "circle",
    ) -> None:
        cx, cy = self.px(x, y)
        attrs = "".join(f' data-{k}="{_attr(v)}"' for k, v in (data or {}).items())
        title = f"<title>{escape(tip)}</title>" if tip else ""
        if shape == "diamond":
            d = f"M{cx:.1f},{cy - r:.1f}L{cx + r:.1f},{cy:.1f}L{cx:.1f},{cy + r:.1f}L{cx - r:.1f},{cy:.1f}Z"  # noqa: E501
            self.marks.append(f'<path class="{cls}" d="{d}"{attrs}>{title}</path>')
        else:
            self.marks.append(
                f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}"{attrs}>'
                f"{title}</circle>"
            )

    def line(
        self,
        points: Sequence[tuple[float, float]],
        *,
        cls: str = "line",
        tip: str = "",
        step: bool = False,
        data: dict[str, object] | None = None,
    ) -> None:
        if not points:
            return
        pts = [self.px(x, y) for x, y in points]
        if step:  # horizontal then vertical: a step function
            stepped = [pts[0]]
            for (_, y0), (x1, y1) in itertools.pairwise(pts):
                stepped += [(x1, y0), (x1, y1)]
            pts = stepped
        d = "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        attrs = "".join(f' data-{k}="{_attr(v)}"' for k, v in (data or {}).items())
        title = f"<title>{escape(tip)}</title>" if tip else ""
        self.marks.append(f'<path class="{cls}" d="{d}" fill="none"{attrs}>{title}</path>')

    def hline(self, y: float, label: str, *, cls: str = "ref") -> None:
        _, py = self.px(self.x.lo, y)
        self.marks.append(
            f'<line class="{cls}" x1="{self.left:.1f}" x2="{self.right:.1f}" y1="{py:.1f}" '
            f'y2="{py:.1f}"><title>{escape(label)}</title></line>'
            f'<text class="ref-label" x="{self.right - 4:.1f}" y="{py - 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
        )

    def vline(self, x: float, label: str, *, cls: str = "ref", dy: float = 0) -> None:
        px, _ = self.px(x, self.y.lo)
        self.marks.append(
            f'<line class="{cls}" x1="{px:.1f}" x2="{px:.1f}" y1="{self.top:.1f}" '
            f'y2="{self.bottom:.1f}"><title>{escape(label)}</title></line>'
            f'<text class="ref-label" x="{px + 4:.1f}" y="{self.top + 12 + dy:.1f}">'
            f"{escape(label)}</text>"
        )

    def label(
        self,
        x: float,
        y: float,
        text: str,
        *,
        dx: float = 7,
        dy: float = -7,
        cls: str = "point-label",
        anchor: str = "start",
    ) -> None:
        px, py = self.px(x, y)
        self.marks.append(
            f'<text class="{cls}" x="{px + dx:.1f}" y="{py + dy:.1f}" text-anchor="{anchor}">'
            f"{escape(text)}</text>"
        )

    def render(self) -> str:
        """The ``<svg>`` element: grid, axes with ticks and labels, the marks, a legend."""
        parts = [
            f'<svg class="{self.css_class}" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" '
            f'aria-label="{_attr(self.title)}" xmlns="http://www.w3.org/2000/svg">',
            f"<title>{escape(self.title)}</title>",
            f'<clipPath id="clip-{self.key}"><rect x="{self.left}" y="{self.top}" '
            f'width="{self.right - self.left}" height="{self.bottom - self.top}"/></clipPath>',
        ]
        for v in self.x.tick_values():
            px, _ = self.px(v, self.y.lo)
            parts.append(
                f'<line class="grid" x1="{px:.1f}" x2="{px:.1f}" y1="{self.top}" '
                f'y2="{self.bottom}"/><text class="tick" x="{px:.1f}" y="{self.bottom + 16}" '
                f'text-anchor="middle">{escape(self.x.fmt(v))}</text>'
            )
        for v in self.y.tick_values():
            _, py = self.px(self.x.lo, v)
            parts.append(
                f'<line class="grid" x1="{self.left}" x2="{self.right}" y1="{py:.1f}" '
                f'y2="{py:.1f}"/><text class="tick" x="{self.left - 6}" y="{py + 4:.1f}" '
                f'text-anchor="end">{escape(self.y.fmt(v))}</text>'
            )
        parts.append(
            f'<rect class="frame" x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
            f'height="{self.bottom - self.top}" fill="none"/>'
            f'<text class="axis-label" x="{(self.left + self.right) / 2:.1f}" '
            f'y="{self.height - 12}" text-anchor="middle">{escape(self.x.label)}</text>'
            f'<text class="axis-label" transform="translate(16 {(self.top + self.bottom) / 2:.1f}) '
            f'rotate(-90)" text-anchor="middle">{escape(self.y.label)}</text>'
        )
        parts.append(f'<g clip-path="url(#clip-{self.key})">{"".join(self.marks)}</g>')
        parts.extend(self.outside)
        for i, (cls, text) in enumerate(self.legend):
            ly = self.top + 14 + i * 18
            lx = self.left + 10
            parts.append(
                f'<rect class="legend-box" x="{lx - 4}" y="{ly - 11}" width="12" height="12" '
                f'style="fill:var(--{cls})"/><text class="legend" x="{lx + 14}" y="{ly}">'
                f"{escape(text)}</text>"
            )
        parts.append("</svg>")
        return "".join(parts)
