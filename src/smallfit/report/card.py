"""A model card (Markdown) for each saved model of a run, from the same checked facts as the
page: what it is, how it was made, how good and fast it is on this run's data, where it is
weaker, and how to load and serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.models.base import MANIFEST, MODEL_CARD, write_text
from smallfit.report.facts import TEACHER, Facts, per_1m, ratios
from smallfit.report.fmt import latency_ms, mb, ms, pct, times, usd
from smallfit.report.uncertainty import ci_text, diff_text
from smallfit.run.layout import RunDir
from smallfit.run.records import CandidateResult


def model_card(f: Facts, c: CandidateResult) -> str:
    """The card of candidate ``c``."""
    q, lin = c.quality, c.lineage
    r = ratios(f, c)
    name = c.name
    role = (
        "the chosen model"
        if name == f.chosen
        else "the teacher"
        if name == TEACHER
        else "a candidate (not chosen)"
    )
    lines = [
        f"# {name}",
        "",
        f"{role.capitalize()} of the smallfit run `{f.run_dir}`: a `{c.backend}` "
        f"classifier over {len(f.labels)} labels.",
        "",
        "## How it was made",
        "",
    ]
    for key in ("base", "teacher", "recipe", "trained_on", "train_examples", "compressed_from"):
        if lin.get(key) not in (None, ""):
            lines.append(f"- {key.replace('_', ' ')}: {lin[key]}")
    if lin.get("tiers"):
        lines.append(f"- tiers: {' -> '.join(lin['tiers'])} (target `{lin.get('target')}`)")
    for i, step in enumerate(lin.get("compression") or [], 1):
        conf = ", ".join(f"{k}={v}" for k, v in step.items() if k not in ("metrics", "method"))
        lines.append(f"- compression step {i}: {step.get('method')} ({conf})")
    training = lin.get("training") or {}
    if training.get("seconds") is not None:
        lines.append(
            f"- training: {training.get('epochs')} epoch(s), {training.get('seconds')} s, "
            f"best dev agreement {training.get('best_dev_agreement')}"
        )
    s = c.speed
    lines += [
        "",
        "## Measured on this run's test split",
        "",
        "| metric | value |",
        "|---|---|",
        f"| {f.metric} | {pct(q.value(f.metric))} |",
        f"| {f.metric}, 95% interval | {ci_text(c.quality.interval(f.metric))} |",
        *_quality_rows(q),
        f"| batch-1 latency, 1 thread (p50 / p95 / p99) | {ms(latency_ms(c, '1'))} / "
        f"{ms(latency_ms(c, '1', 'p95_ms'))} / {ms(latency_ms(c, '1', 'p99_ms'))} |",
        f"| throughput (batches, all threads) | {s.throughput_per_s or 0:,.0f} texts/s |",
        f"| size on disk | {mb(c.bytes_on_disk)} |",
        f"| peak memory | {mb(s.peak_rss_bytes)} |",
        f"| cost per 1M queries | {usd(per_1m(c, f.hour_usd))} |",
    ]
    if f.teacher is not None and name != TEACHER:
        lines.append(
            f"| against the teacher | {r['quality_pct'] or 0:.1f}% of its {f.metric}, "
            f"{times(r['speedup_p50_1t'])} faster, {times(r['size_ratio'])} smaller |"
        )
        paired = q.vs_teacher
        if paired is None or f.metric in paired:
            lines.append(
                f"| {f.metric} minus the teacher's (paired 95% interval) | "
                f"{diff_text(c.quality.paired(f.metric))} |"
            )
    env = f.results.environment
    lines += [
        "",
        f"Measured on {env.get('cpu_model', '?')} ({env.get('usable_cores', '?')} cores), "
        f"{env.get('timestamp', '')}.",
    ]
    if q.per_class:
        worst = sorted(q.per_class.items(), key=lambda kv: (kv[1].f1, kv[0]))[:5]
        lines += ["", "## Weakest classes (F1 on test)", ""]
        lines += [f"- {label}: {pct(m.f1, 1)} ({m.support} texts)" for label, m in worst]
    if q.fields is not None and q.fields.per_field:
        weak = sorted(q.fields.per_field.items(), key=lambda kv: (kv[1].f1, kv[0]))[:5]
        lines += ["", "## Weakest fields (F1 on test)", ""]
        lines += [f"- {name}: {pct(m.f1, 1)} ({m.support} values)" for name, m in weak]
    call = (
        'print(model.extract(["the text to read"])[0].values)'
        if q.fields is not None
        else 'print(model.predict(["the text to classify"]))'
    )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import smallfit",
        "",
        f'model = smallfit.load("{RunDir(str(f.run_dir)).model(name)}")',
        call,
        "```",
        "",
        f"Serve it over HTTP: `smallfit serve {RunDir(str(f.run_dir)).model(name)}`.",
        "",
        "Limitations: measured on this run's own data only; texts unlike the training data "
        "(other topics, languages, lengths) were not measured. Written by `smallfit report` from "
        "the run's saved results.",
        "",
    ]
    return "\n".join(lines)


def _quality_rows(q: Any) -> list[str]:
    """The quality rows of a card beyond its selection metric: a classifier's macro F1,
    agreement and calibration, an extractor's field figures."""
    fields = q.fields
    if fields is None:
        return [
            f"| macro F1 | {pct(q.macro_f1)} |",
            f"| agreement with the teacher | {pct(q.teacher_agreement)} |",
            f"| expected calibration error | {'–' if q.ece is None else f'{q.ece:.4f}'} |",
        ]
    rows = [
        f"| micro F1 over fields | {pct(fields.micro_f1)} |",
        f"| macro F1 over fields | {pct(fields.macro_f1)} |",
        f"| documents with every field right | {pct(fields.doc_exact)} |",
        f"| valid JSON answers | {pct(fields.json_valid)} |",
        f"| micro F1 against the teacher's answers | {pct(fields.teacher_micro_f1)} |",
    ]
    if fields.values_not_in_text is not None:
        rows.append(f"| values not in their text | {fields.values_not_in_text} |")
    return rows


def write_model_cards(f: Facts) -> list[Path]:
    """A card beside each of the run's saved models (those under ``run_dir/models``)."""
    written = []
    for c in f.candidates:
        where = RunDir(f.run_dir).model(c.name)
        if not (where / MANIFEST).is_file():
            continue
        path = where / MODEL_CARD
        write_text(path, model_card(f, c))
        written.append(path)
    return written
