"""Choosing the winner: the Pareto front of quality, latency and size, and the smallest candidate
over the quality floor and under the latency ceiling.

A candidate is a dict as written by :func:`smallfit.evaluate.evaluate_candidate`: it has
``name``, ``backend``, ``bytes_on_disk``, ``parameters``, ``quality`` (accuracy, macro_f1,
teacher_agreement, ece), ``speed`` (``threads["1"]["p50_ms"]`` and friends) and, optionally,
``roofline`` (``share_of_peak``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from smallfit.config import SelectConfig, parse_floor
from smallfit.errors import SmallfitError
from smallfit.evaluate.speed import batched_throughput

Candidate = dict[str, Any]


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`; ``chosen`` is None when no candidate qualifies."""

    chosen: str | None
    floor: float
    ceiling_ms: float | None
    front: list[str]
    eligible: list[str]
    reason: str
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quality(c: Candidate, metric: str) -> float | None:
    value = c.get("quality", {}).get(metric)
    return None if value is None else float(value)


def _p50(c: Candidate, threads: str = "1") -> float:
    try:
        return float(c["speed"]["threads"][threads]["p50_ms"])
    except (KeyError, TypeError) as exc:
        raise SmallfitError(
            f"candidate {c.get('name')!r} has no batch-1 latency at {threads} thread(s)"
        ) from exc


def _remote(c: Candidate) -> bool:
    """Behind an API (an LLM teacher): nothing of its own to ship, so never 'small'."""
    return bool((c.get("speed") or {}).get("remote"))


def _size(c: Candidate, size: str) -> float:
    if _remote(c):
        return math.inf
    if c.get(size) is None:
        raise SmallfitError(f"candidate {c.get('name')!r} has no {size!r}")
    return float(c[size])


def pareto_front(
    candidates: list[Candidate], *, metric: str = "accuracy", size: str = "bytes_on_disk"
) -> list[str]:
    """Names of the candidates no other candidate beats on all of (higher quality, lower batch-1
    p50 latency at 1 thread, smaller ``size``) while being strictly better on one. Candidates
    without a value for ``metric`` are left out. Input order is kept."""
    points = [
        (c["name"], q, _p50(c), _size(c, size))
        for c in candidates
        if (q := _quality(c, metric)) is not None
    ]

    def dominates(a: tuple[str, float, float, float], b: tuple[str, float, float, float]) -> bool:
        no_worse = a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]
        return no_worse and (a[1] > b[1] or a[2] < b[2] or a[3] < b[3])

    return [p[0] for p in points if not any(dominates(o, p) for o in points)]


def select(
    candidates: list[Candidate], config: SelectConfig, *, teacher_name: str = "teacher"
) -> Selection:
    """The smallest candidate (``config.size``; ties: lower latency) whose ``config.metric`` is at
    least the floor and whose batch-1 p50 at 1 thread is under the ceiling. A relative floor
    (``'0.98 * teacher'``) multiplies the teacher candidate's metric. The teacher is eligible too.
    """
    metric, size, ceiling = config.metric, config.size, config.latency_ceiling_ms
    try:
        factor, relative = parse_floor(config.quality_floor)
    except ValueError as exc:
        raise SmallfitError(str(exc)) from exc
    floor = factor
    if relative:
        teacher = next((c for c in candidates if c.get("name") == teacher_name), None)
        if teacher is None:
            raise SmallfitError(
                f"quality_floor {config.quality_floor!r} is relative to the teacher, but there "
                f"is no candidate named {teacher_name!r}"
            )
        teacher_q = _quality(teacher, metric)
        if teacher_q is None:
            raise SmallfitError(f"the teacher candidate has no {metric!r} to set the floor")
        floor = factor * teacher_q
    front = pareto_front(candidates, metric=metric, size=size)

    def over_floor(c: Candidate) -> bool:
        q = _quality(c, metric)
        return q is not None and q >= floor - 1e-12

    good = [c for c in candidates if over_floor(c)]
    eligible = [c for c in good if ceiling is None or _p50(c) <= ceiling]
    names = [c["name"] for c in eligible]
    if not candidates:
        return Selection(None, floor, ceiling, front, names, "no candidates to choose from", metric)
    if not good:
        scored = [c for c in candidates if _quality(c, metric) is not None]
        if not scored:
            reason = f"no candidate has a {metric} value"
        else:
            best = max(scored, key=lambda c: _quality(c, metric) or 0.0)
            reason = (
                f"no candidate reaches the quality floor: best {metric} "
                f"{_quality(best, metric):.4f} ({best['name']}) < floor {floor:.4f}"
            )
        return Selection(None, floor, ceiling, front, names, reason, metric)
    if not eligible:
        fastest = min(good, key=_p50)
        reason = (
            f"{len(good)} candidate(s) reach the quality floor {floor:.4f} but none is under the "
            f"latency ceiling {ceiling:g} ms (fastest: {fastest['name']} at "
            f"{_p50(fastest):.3f} ms)"
        )
        return Selection(None, floor, ceiling, front, names, reason, metric)
    best = min(eligible, key=lambda c: (_size(c, size), _p50(c)))
    if _remote(best):
        reason = (
            f"{best['name']} (behind an API) is chosen: no local candidate reaches the floor "
            f"{floor:.4f} on {metric}"
            + (f" under the ceiling {ceiling:g} ms" if ceiling is not None else "")
        )
        return Selection(best["name"], floor, ceiling, front, names, reason, metric)
    reason = (
        f"{best['name']} is the smallest of {len(eligible)} eligible candidate(s) "
        f"({size} {_size(best, size):,.0f}): {metric} {_quality(best, metric):.4f} >= floor "
        f"{floor:.4f}"
        + (f", p50 {_p50(best):.3f} ms <= ceiling {ceiling:g} ms" if ceiling is not None else "")
    )
    return Selection(best["name"], floor, ceiling, front, names, reason, metric)


def _teacher(candidates: list[Candidate], teacher_name: str) -> Candidate | None:
    return next((c for c in candidates if c.get("name") == teacher_name), None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def vs_teacher(c: Candidate, teacher: Candidate | None, *, metric: str) -> dict[str, float | None]:
    """``{"speedup_p50_1t", "size_ratio", "quality_pct"}``: x faster batch-1 p50 at 1 thread,
    x smaller on disk, and the candidate's ``metric`` as a percentage of the teacher's."""
    if teacher is None:
        return {"speedup_p50_1t": None, "size_ratio": None, "quality_pct": None}
    pct = _ratio(_quality(c, metric), _quality(teacher, metric))
    return {
        "speedup_p50_1t": _ratio(_p50(teacher), _p50(c)),
        "size_ratio": None
        if _remote(teacher) or _remote(c)
        else _ratio(teacher.get("bytes_on_disk"), c.get("bytes_on_disk")),
        "quality_pct": None if pct is None else 100.0 * pct,
    }


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale, spec)


def format_table(
    candidates: list[Candidate],
    selection: Selection,
    *,
    metric: str | None = None,
    teacher_name: str = "teacher",
) -> str:
    """A plain-text table of every candidate, one row each, columns aligned; ``>>`` marks the
    chosen one and ``*`` the Pareto front. Ratios are against the teacher candidate."""
    metric = metric or selection.metric
    teacher = _teacher(candidates, teacher_name)
    speed0 = candidates[0]["speed"] if candidates else {}
    all_t = str(speed0.get("cpu_threads_all", "all"))
    batch = speed0.get("throughput_batch", 32)
    head = [
        "", "name", "backend", "acc%", "F1%", "agree%", "ECE",
        "p50@1t", "p95@1t", "p99@1t", f"p50@{all_t}t", f"b{batch}/s",
        "RSS MB", "size MB", "params M", "$/1M", "x faster", "x smaller", "%teacher", "%peak",
    ]  # fmt: skip
    rows = []
    for c in candidates:
        q, s = c.get("quality", {}), c.get("speed", {})
        one = s.get("threads", {}).get("1", {})
        allt = s.get("threads", {}).get(str(s.get("cpu_threads_all")), {})
        ratios = vs_teacher(c, teacher, metric=metric)
        mark = (">>" if c["name"] == selection.chosen else "") + (
            "*" if c["name"] in selection.front else ""
        )
        rows.append([
            mark, str(c["name"]), str(c.get("backend", "-")),
            _fmt(q.get("accuracy"), ".2f", 100), _fmt(q.get("macro_f1"), ".2f", 100),
            _fmt(q.get("teacher_agreement"), ".2f", 100), _fmt(q.get("ece"), ".4f"),
            _fmt(one.get("p50_ms"), ".3f"), _fmt(one.get("p95_ms"), ".3f"),
            _fmt(one.get("p99_ms"), ".3f"), _fmt(allt.get("p50_ms"), ".3f"),
            _fmt(batched_throughput(s), ".1f"), _fmt(s.get("peak_rss_bytes"), ".1f", 1e-6),
            _fmt(None if _remote(c) else c.get("bytes_on_disk"), ".2f", 1e-6),
            _fmt(c.get("parameters") or None, ".3f", 1e-6),
            _fmt((c.get("cost") or {}).get("per_1m_queries_usd"), ".3g"),
            _fmt(ratios["speedup_p50_1t"], ".1f"), _fmt(ratios["size_ratio"], ".1f"),
            _fmt(ratios["quality_pct"], ".1f"),
            _fmt((c.get("roofline") or {}).get("share_of_peak"), ".1f", 100),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        out = [
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "-" * len(line(head))
    ceiling = "none" if selection.ceiling_ms is None else f"{selection.ceiling_ms:g} ms"
    legend = [
        f"latency: batch-1 ms at 1 thread and at {all_t} threads; throughput texts/s at batch "
        f"{batch} with {all_t} threads; MB = 1e6 bytes; ratios vs '{teacher_name}' "
        f"(%teacher: {metric} as % of the teacher's)",
        "%peak: FLOPs per query / p50@1t as % of this machine's 1-thread matrix-multiply peak "
        "at the candidate's precision (fp32, bf16 or int8)",
        "$/1M: dollars per million queries (local: this machine's hourly price at the batched "
        "throughput; API: tokens per query at its prices); an API model has no size or RSS",
        f"* Pareto front ({metric}, p50@1t, size)   >> chosen   floor {metric} "
        f">= {selection.floor:.4f}, ceiling {ceiling}",
        f"selection: {selection.reason}",
    ]
    return "\n".join([line(head), rule, *(line(r) for r in rows), rule, *legend])


def selection_json(
    candidates: list[Candidate], selection: Selection, *, teacher_name: str = "teacher"
) -> str:
    """One line of JSON: the chosen candidate, its metrics and ratios vs the teacher, the floor
    and the ceiling (``chosen`` is null, with the reason, when nothing qualifies)."""
    out: dict[str, Any] = {
        "chosen": selection.chosen,
        "metric": selection.metric,
        "floor": selection.floor,
        "ceiling_ms": selection.ceiling_ms,
        "reason": selection.reason,
    }
    chosen = next((c for c in candidates if c["name"] == selection.chosen), None)
    if chosen is not None:
        q, s = chosen.get("quality", {}), chosen.get("speed", {})
        one = s.get("threads", {}).get("1", {})
        out.update(
            backend=chosen.get("backend"),
            quality={k: q.get(k) for k in ("accuracy", "macro_f1", "teacher_agreement", "ece")},
            latency_1t_ms={k: one.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
            throughput_per_s=batched_throughput(s),
            throughput_batch=s.get("throughput_batch"),
            peak_rss_bytes=s.get("peak_rss_bytes"),
            bytes_on_disk=chosen.get("bytes_on_disk"),
            parameters=chosen.get("parameters"),
            vs_teacher=vs_teacher(
                chosen, _teacher(candidates, teacher_name), metric=selection.metric
            ),
        )
    return json.dumps(out, separators=(",", ":"))
