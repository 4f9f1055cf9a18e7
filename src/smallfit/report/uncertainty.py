"""How the report states uncertainty: 95% intervals of the quality figures and paired
differences from the teacher, as fit measured them (results.json); 'no interval' for runs
measured before smallfit recorded them."""

from __future__ import annotations

from html import escape

from smallfit.report.facts import TEACHER, Facts
from smallfit.run.records import CandidateResult, Paired


def ci_text(ci: list[float] | None) -> str:
    """A 95% interval of a share, '91.95–93.80%'; 'no interval' for results without one."""
    return "no interval" if not ci else f"{100 * ci[0]:.2f}–{100 * ci[1]:.2f}%"


def diff_text(paired: Paired | None) -> str:
    """A paired difference from the teacher and its 95% interval, in points:
    '-0.94 pt (-1.42 to -0.49)'; 'no interval' for results without one."""
    if paired is None:
        return "no interval"
    lo, hi = paired.ci95
    return f"{100 * paired.diff:+.2f} pt ({100 * lo:+.2f} to {100 * hi:+.2f})"


def vs_teacher_cell(f: Facts, c: CandidateResult) -> str:
    """'–' for the teacher itself and for figures with no difference (agreement is already a
    comparison with the teacher); 'no interval' for results measured without one."""
    if c.name == TEACHER or f.teacher is None:
        return "–"
    measured = c.quality.vs_teacher
    if measured is None:
        return "no interval"
    return diff_text(measured[f.metric]) if f.metric in measured else "–"


def resolution_html(f: Facts) -> str:
    """What the test set cannot tell apart, as selection said (older runs: nothing)."""
    notes = [] if f.selection is None else f.selection.resolution
    if not notes:
        return ""
    return (
        '<p class="aside" id="resolution">What this test set cannot tell apart: '
        + "; ".join(f"<span>{escape(str(n))}</span>" for n in notes)
        + ".</p>"
    )


def cascade_vs_teacher_html(f: Facts) -> str:
    """'; against the teacher, a paired difference of ...' for the verdict's cascade sentence,
    saying when the test set cannot tell the two apart; '' without a measured difference."""
    cascade = f.candidate("cascade")
    if cascade is None:
        return ""
    q = cascade.quality
    paired = q.paired("accuracy")
    if paired is None:
        return ""
    lo, hi = paired.ci95
    unresolved = ""
    if lo == hi == 0:
        unresolved = " (no resample tells them apart)"
    elif lo <= 0 <= hi:
        unresolved = (
            f" (its interval includes 0: the {q.n} test texts cannot tell the cascade "
            "from the teacher)"
        )
    return (
        "; against the teacher, a paired difference of "
        f'<span data-field="cascade_diff">{diff_text(paired)}</span>{unresolved}'
    )
