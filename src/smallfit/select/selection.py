"""Choosing the winner: the Pareto front of quality, latency and size, and the smallest candidate
over the quality floor and under the latency ceiling.

A candidate is its :class:`~smallfit.run.records.CandidateResult`, as evaluation measured it
(``quality``, with ``ci95`` and ``vs_teacher`` where measured; ``speed``; ``roofline``; ``cost``).

The rule compares point estimates. What the test set cannot resolve is said beside it, in
``Selection.resolution``: a quality interval that straddles the floor, a paired difference from
the teacher whose interval includes 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.run.records import CandidateResult, Latency, resolve_metric
from smallfit.select.config import SelectConfig, parse_floor

Candidate = CandidateResult


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
    resolution: tuple[str, ...] = ()
    """What the test set cannot tell apart (see :func:`resolution`); empty when it can."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quality(c: Candidate, metric: str) -> float | None:
    return c.quality.value(metric)


def _ci(c: Candidate, metric: str) -> tuple[float, float] | None:
    """The 95% interval of ``metric`` (None for results measured without one)."""
    ci = c.quality.interval(metric)
    return None if not ci else (float(ci[0]), float(ci[1]))


def paired_diff(c: Candidate, metric: str) -> tuple[float, float, float] | None:
    """``(diff, lo, hi)``: ``metric`` minus the teacher's on the same test texts and its paired
    95% interval, as measured (None without one, e.g. for ``teacher_agreement``)."""
    d = c.quality.paired(metric)
    if d is None:
        return None
    return float(d.diff), float(d.ci95[0]), float(d.ci95[1])


def _texts(c: Candidate) -> str:
    return f"the test set ({c.quality.n:,} texts)"


def _range(lo: float, hi: float) -> str:
    return f"[{100 * lo:.2f}%, {100 * hi:.2f}%]"


def resolution(
    candidates: list[Candidate],
    *,
    subject: str | None,
    chosen: str | None,
    floor: float,
    metric: str,
    rivals: Sequence[str] = (),
    teacher_name: str = "teacher",
) -> tuple[str, ...]:
    """Sentences saying what the test set cannot tell apart, from the candidates' 95% intervals
    (empty when it tells everything the rule decided on apart):

    - ``subject`` (the chosen candidate, or the best when none reaches the floor) against the
      floor, when its interval straddles the floor (the floor taken as the number the rule
      compares with, even when it is relative to the teacher's estimate);
    - each of ``rivals`` (candidates the rule would have preferred, left out under the floor)
      whose interval reaches the floor;
    - ``chosen`` against the teacher, when the paired interval of the difference includes 0.
    """
    by_name: dict[str | None, Candidate] = {c.name: c for c in candidates}
    notes: list[str] = []
    c = by_name.get(subject)
    if c is not None:
        q, ci = _quality(c, metric) or 0.0, _ci(c, metric)
        if ci is None:
            notes.append(
                f"{c.name} has no 95% interval for {metric} (measured before smallfit "
                "recorded them): whether the test set resolves the floor is unknown"
            )
        elif ci[0] < floor <= ci[1] + 1e-12:
            notes.append(
                f"{_texts(c)} cannot tell {c.name} from the floor: its {metric} "
                f"{100 * q:.2f}% has the 95% interval {_range(*ci)}, which straddles the floor "
                f"{100 * floor:.2f}%"
            )
    close = []
    for name in rivals:
        ci = _ci(by_name[name], metric)
        if ci is not None and ci[1] + 1e-12 >= floor:
            q = _quality(by_name[name], metric) or 0.0
            close.append(f"{name} ({100 * q:.2f}%, 95% interval {_range(*ci)})")
    if close:
        reach = "its interval reaches" if len(close) == 1 else "their intervals reach"
        notes.append(
            f"{_texts(by_name[rivals[0]])} cannot tell {', '.join(close)} from the floor: "
            f"left out under it, though {reach} it"
        )
    c = by_name.get(chosen)
    if c is not None and chosen != teacher_name:
        paired = paired_diff(c, metric)
        if paired is not None and paired[1] <= 0 <= paired[2]:
            d, lo, hi = paired
            notes.append(
                f"{_texts(c)} cannot tell {chosen} from the teacher on {metric}: the difference "
                f"{100 * d:+.2f} pt has the paired 95% interval [{100 * lo:+.2f}, "
                f"{100 * hi:+.2f}] pt, which includes 0"
            )
    return tuple(notes)


def _p50(c: Candidate, threads: int = 1) -> float:
    p50 = c.speed.p50_ms(threads)
    if p50 is None:
        raise SmallfitError(f"candidate {c.name!r} has no batch-1 latency at {threads} thread(s)")
    return p50


def _remote(c: Candidate) -> bool:
    """Behind an API (an LLM teacher): nothing of its own to ship, so never 'small'."""
    return c.speed.remote


def _size(c: Candidate, size: str) -> float:
    if _remote(c):
        return math.inf
    return float(getattr(c, size))


def pareto_front(
    candidates: list[Candidate], *, metric: str = "accuracy", size: str = "bytes_on_disk"
) -> list[str]:
    """Names of the candidates no other candidate beats on all of (higher quality, lower batch-1
    p50 latency at 1 thread, smaller ``size``) while being strictly better on one. Candidates
    without a value for ``metric`` are left out. Input order is kept."""
    points = [
        (c.name, q, _p50(c), _size(c, size))
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
    An unset metric is resolved by :func:`resolve_metric`; ``Selection.metric`` records it.
    """
    metric = resolve_metric(config.metric, candidates)
    size, ceiling = config.size, config.latency_ceiling_ms
    try:
        factor, relative = parse_floor(config.quality_floor)
    except ValueError as exc:
        raise SmallfitError(str(exc)) from exc
    floor = factor
    if relative:
        teacher = _teacher(candidates, teacher_name)
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

    def under_ceiling(c: Candidate) -> bool:
        return ceiling is None or _p50(c) <= ceiling

    def rank(c: Candidate) -> tuple[float, float]:
        return _size(c, size), _p50(c)

    good = [c for c in candidates if over_floor(c)]
    eligible = [c for c in good if under_ceiling(c)]
    names = [c.name for c in eligible]
    scored = [c for c in candidates if _quality(c, metric) is not None]

    def outcome(chosen: Candidate | None, reason: str, subject: Candidate | None) -> Selection:
        rivals = [
            c.name
            for c in scored
            if not over_floor(c)
            and c is not subject
            and under_ceiling(c)
            and (chosen is None or rank(c) < rank(chosen))
        ]
        notes = resolution(
            candidates,
            subject=None if subject is None else subject.name,
            chosen=None if chosen is None else chosen.name,
            floor=floor,
            metric=metric,
            rivals=rivals,
            teacher_name=teacher_name,
        )
        name = None if chosen is None else chosen.name
        return Selection(name, floor, ceiling, front, names, reason, metric, notes)

    if not candidates:
        return outcome(None, "no candidates to choose from", None)
    if not good:
        if not scored:
            return outcome(None, f"no candidate has a {metric} value", None)
        best = max(scored, key=lambda c: _quality(c, metric) or 0.0)
        reason = (
            f"no candidate reaches the quality floor: best {metric} "
            f"{_quality(best, metric):.4f} ({best.name}) < floor {floor:.4f}"
        )
        return outcome(None, reason, best)
    if not eligible:
        fastest = min(good, key=_p50)
        reason = (
            f"{len(good)} candidate(s) reach the quality floor {floor:.4f} but none is under the "
            f"latency ceiling {ceiling:g} ms (fastest: {fastest.name} at "
            f"{_p50(fastest):.3f} ms)"
        )
        return outcome(None, reason, None)
    best = min(eligible, key=rank)
    if _remote(best):
        reason = (
            f"{best.name} (behind an API) is chosen: no local candidate reaches the floor "
            f"{floor:.4f} on {metric}"
            + (f" under the ceiling {ceiling:g} ms" if ceiling is not None else "")
        )
        return outcome(best, reason, best)
    reason = (
        f"{best.name} is the smallest of {len(eligible)} eligible candidate(s) "
        f"({size} {_size(best, size):,.0f}): {metric} {_quality(best, metric):.4f} >= floor "
        f"{floor:.4f}"
        + (f", p50 {_p50(best):.3f} ms <= ceiling {ceiling:g} ms" if ceiling is not None else "")
    )
    return outcome(best, reason, best)


def _teacher(candidates: list[Candidate], teacher_name: str) -> Candidate | None:
    return next((c for c in candidates if c.name == teacher_name), None)


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
        else _ratio(teacher.bytes_on_disk, c.bytes_on_disk),
        "quality_pct": None if pct is None else 100.0 * pct,
    }


def _ms(latency: Latency | None, which: str) -> float | None:
    """A latency figure in ms (``p50_ms``, ``p95_ms``...); None when not measured."""
    return None if latency is None else getattr(latency, which)


ABBREV = {
    "accuracy": "acc",
    "macro_f1": "F1",
    "teacher_agreement": "agree",
    "field_f1": "fieldF1",
    "field_macro_f1": "fieldmF1",
    "doc_exact": "docEM",
    "field_agreement": "f-agree",
}
_QUALITY_COLUMNS = {
    False: ("accuracy", "macro_f1", "teacher_agreement"),
    True: ("field_f1", "doc_exact", "field_agreement"),  # an extract task's
}


def _ci_cell(c: Candidate, metric: str) -> str:
    ci = _ci(c, metric)
    return "-" if ci is None else f"[{100 * ci[0]:.2f},{100 * ci[1]:.2f}]"


def _diff_cell(c: Candidate, metric: str, teacher_name: str) -> str:
    paired = None if c.name == teacher_name else paired_diff(c, metric)
    if paired is None:
        return "-"
    d, lo, hi = paired
    return f"{100 * d:+.2f} [{100 * lo:+.2f},{100 * hi:+.2f}]"


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
    recommended: dict[str, Any] | None = None,
) -> str:
    """A plain-text table of every candidate, one row each, columns aligned; ``>>`` marks the
    chosen one, ``=>`` the recommended deployment when that is another (the cascade, when the
    teacher was chosen) and ``*`` the Pareto front. Ratios are against the teacher candidate."""
    advice = recommended or {}
    other = advice.get("name") if advice.get("name") != selection.chosen else None
    metric = metric or selection.metric
    teacher = _teacher(candidates, teacher_name)
    speed0 = candidates[0].speed if candidates else None
    all_t = (
        "all" if speed0 is None or speed0.cpu_threads_all is None else str(speed0.cpu_threads_all)
    )
    batch = 32 if speed0 is None or speed0.throughput_batch is None else speed0.throughput_batch
    abbrev = ABBREV.get(metric, metric)
    columns = _QUALITY_COLUMNS[any(c.quality.fields is not None for c in candidates)]
    head = [
        "", "name", "backend", *(f"{ABBREV[m]}%" for m in columns), f"{abbrev}% 95% CI",
        f"{abbrev}-teacher pt", "ECE",
        "p50@1t", "p95@1t", "p99@1t", f"p50@{all_t}t", f"b{batch}/s",
        "RSS MB", "size MB", "params M", "$/1M", "x faster", "x smaller", "%teacher", "%peak",
    ]  # fmt: skip
    rows = []
    for c in candidates:
        q, s = c.quality, c.speed
        one, allt = s.threads.get("1"), s.threads.get(str(s.cpu_threads_all))
        ratios = vs_teacher(c, teacher, metric=metric)
        mark = (">>" if c.name == selection.chosen else "=>" if c.name == other else "") + (
            "*" if c.name in selection.front else ""
        )
        rows.append([
            mark, c.name, c.backend,
            *(_fmt(q.value(m), ".2f", 100) for m in columns), _ci_cell(c, metric),
            _diff_cell(c, metric, teacher_name), _fmt(q.ece, ".4f"),
            _fmt(_ms(one, "p50_ms"), ".3f"), _fmt(_ms(one, "p95_ms"), ".3f"),
            _fmt(_ms(one, "p99_ms"), ".3f"), _fmt(_ms(allt, "p50_ms"), ".3f"),
            _fmt(s.throughput_per_s, ".1f"), _fmt(s.peak_rss_bytes, ".1f", 1e-6),
            _fmt(None if _remote(c) else c.bytes_on_disk, ".2f", 1e-6),
            _fmt(c.parameters or None, ".3f", 1e-6),
            _fmt(c.cost.per_1m_queries_usd if c.cost else None, ".3g"),
            _fmt(ratios["speedup_p50_1t"], ".1f"), _fmt(ratios["size_ratio"], ".1f"),
            _fmt(ratios["quality_pct"], ".1f"),
            _fmt(c.roofline.share_of_peak if c.roofline else None, ".1f", 100),
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
        f"{abbrev}% 95% CI: percentile bootstrap over the test texts; {abbrev}-teacher: "
        f"{metric} minus the teacher's in points, with the paired 95% interval (the same "
        "resampled texts for both); - = not measured",
        f"* Pareto front ({metric}, p50@1t, size)   >> chosen   => recommended   floor {metric} "
        f">= {selection.floor:.4f}, ceiling {ceiling}",
        f"selection: {selection.reason}",
        *(f"resolution: {note}" for note in selection.resolution),
        *(
            [f"recommended: {advice.get('name') or 'nothing'} ({advice.get('reason')})"]
            if advice
            else []
        ),
    ]
    return "\n".join([line(head), rule, *(line(r) for r in rows), rule, *legend])


def selection_json(
    candidates: list[Candidate],
    selection: Selection,
    *,
    teacher_name: str = "teacher",
    recommended: dict[str, Any] | None = None,
) -> str:
    """One line of JSON: the chosen candidate, its metrics (with ``quality.ci95``, their 95%
    intervals, and ``quality.vs_teacher``, its paired differences from the teacher) and ratios
    vs the teacher, the floor and the ceiling (``chosen`` is null, with the reason, when nothing
    qualifies); ``resolution`` lists what the test set cannot tell apart; ``recommended`` is
    what to deploy (``{name, reason}``: the cascade when the teacher was chosen and the cascade
    keeps a real share off it)."""
    out: dict[str, Any] = {
        "chosen": selection.chosen,
        "recommended": recommended,
        "metric": selection.metric,
        "floor": selection.floor,
        "ceiling_ms": selection.ceiling_ms,
        "reason": selection.reason,
        "resolution": list(selection.resolution),
    }
    chosen = next((c for c in candidates if c.name == selection.chosen), None)
    if chosen is not None:
        q, s = chosen.quality.dump(), chosen.speed.dump()  # as written to results.json
        one = s.get("threads", {}).get("1", {})
        out.update(
            backend=chosen.backend,
            quality={
                k: q.get(k)
                for k in ("accuracy", "macro_f1", "teacher_agreement", "ece", "n", "ci95")
            }
            | {"vs_teacher": q.get("vs_teacher")}
            | ({"fields": q["fields"]} if q.get("fields") else {}),
            latency_1t_ms={k: one.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
            throughput_per_s=chosen.speed.throughput_per_s,
            throughput_batch=s.get("throughput_batch"),
            peak_rss_bytes=s.get("peak_rss_bytes"),
            bytes_on_disk=chosen.bytes_on_disk,
            parameters=chosen.parameters,
            vs_teacher=vs_teacher(
                chosen, _teacher(candidates, teacher_name), metric=selection.metric
            ),
        )
    return json.dumps(out, separators=(",", ":"))
