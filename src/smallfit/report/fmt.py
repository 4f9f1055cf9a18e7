"""Number formats and small reads of a candidate's results, shared by the report's sections
and the model cards (the tests format results.json the same way)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smallfit.run.records import CandidateResult

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


def latency_ms(c: CandidateResult, threads: str, key: str = "p50_ms") -> float | None:
    row = c.speed.threads.get(threads)
    return None if row is None else getattr(row, key)


def all_threads(c: CandidateResult) -> str:
    n = "" if c.speed.cpu_threads_all is None else str(c.speed.cpu_threads_all)
    threads = c.speed.threads
    return n if n in threads else max(threads, key=lambda t: int(t) if t.isdigit() else 0)


def is_remote(c: CandidateResult) -> bool:
    return c.speed.remote


# -- sections ------------------------------------------------------------------------------------


def flat(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def f1_cells(mine: float, theirs: float | None, gap: float | None) -> str:
    """The chosen model's F1 (with a bar), the teacher's, and the gap in points."""
    width = max(0.0, min(1.0, float(mine))) * 100
    return (
        f'<td data-field="f1">{pct(mine, 1)}'
        f'<span class="bar" style="width:{width:.0f}px"></span></td>'
        f"<td>{pct(theirs, 1)}</td>"
        f'<td class="{"neg" if gap is not None and gap < 0 else ""}">'
        f"{'–' if gap is None else f'{100 * gap:+.1f} pt'}</td>"
    )
