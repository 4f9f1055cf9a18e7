"""One extract candidate, measured: field quality on the test split against gold and against
the teacher's answers, speed and memory (the same probe as a classifier's), size and cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from smallfit.data.fields import FieldSplit
from smallfit.evaluate.bootstrap import RESAMPLES, SEED
from smallfit.evaluate.candidate import SPEED_TEXTS, local_cost
from smallfit.evaluate.config import EvalConfig
from smallfit.evaluate.fields import FieldQuality, field_quality
from smallfit.evaluate.speed import measure_speed
from smallfit.fields import FieldSchema, Values
from smallfit.models.extractor import BaseExtractor, load_extractor
from smallfit.run.records import CandidateResult

BATCH = 64


def extract_in_batches(
    model: BaseExtractor, texts: list[str], *, progress: bool = False, what: str = "test"
) -> list[dict[str, Any]]:
    """Each text's answer as a JSON-ready row: its fields, spans and confidences."""
    rows: list[dict[str, Any]] = []
    with tqdm(
        total=len(texts), desc=f"{model.name}: {what} answers", unit="text", disable=not progress
    ) as bar:
        for i in range(0, len(texts), BATCH):
            for a in model.extract(texts[i : i + BATCH]):
                rows.append(
                    {
                        "fields": a.values,
                        "spans": [[s.start, s.end, s.field] for s in a.spans],
                        # unrounded: a cascade's threshold is calibrated on these
                        "field_confidence": a.field_confidence,
                        "confidence": a.confidence,
                        **({"tier": a.tier} if a.tier else {}),
                        **({} if a.valid else {"valid": False}),
                    }
                )
            bar.update(min(BATCH, len(texts) - i))
    return rows


def _scores(q: FieldQuality, agreement: FieldQuality | None) -> dict[str, Any]:
    return {
        "micro_precision": q.micro_precision,
        "micro_recall": q.micro_recall,
        "micro_f1": q.micro_f1,
        "macro_f1": q.macro_f1,
        "doc_exact": q.doc_exact,
        "json_valid": q.json_valid,
        "per_field": {
            name: {
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "exact": s.exact,
                "support": s.support,
            }
            for name, s in q.per_field.items()
        },
        "teacher_micro_f1": None if agreement is None else agreement.micro_f1,
    }


def field_quality_record(
    answers: list[Values],
    test: FieldSplit,
    schema: FieldSchema,
    *,
    teacher: list[Values] | None,
    resamples: int,
    seed: int,
    valid: list[bool] | None = None,
) -> dict[str, Any]:
    """The ``quality`` of a candidate's result: the field figures against the gold rows, the
    agreement with the teacher (micro F1 and document exact match), the F1 interval.
    ``valid``: whether each answer parsed (default: every one did)."""
    gold_rows = [i for i, d in enumerate(test.docs) if d is not None]
    gold = [d.values for d in test.docs if d is not None]
    agreement = None
    if teacher is not None:
        agreement = field_quality(answers, teacher, schema, resamples=0)
    if gold_rows:
        q = field_quality(
            [answers[i] for i in gold_rows],
            gold,
            schema,
            valid=[valid[i] for i in gold_rows] if valid is not None else None,
            resamples=resamples,
            seed=seed,
        )
        fields = _scores(q, agreement)
        ci = q.micro_f1_ci
    else:
        fields = {
            **dict.fromkeys(
                ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "doc_exact")
            ),
            "json_valid": float(sum(valid)) / len(valid) if valid else 1.0,
            "teacher_micro_f1": None if agreement is None else agreement.micro_f1,
        }
        ci = None
    return {
        "accuracy": None,
        "macro_f1": None,
        "teacher_agreement": None if agreement is None else agreement.doc_exact,
        "ece": None,
        "n": len(answers),
        "n_gold": len(gold_rows),
        "ci95": {"accuracy": None, "macro_f1": None, "ece": None, "field_f1": ci},
        "fields": fields,
    }


def evaluate_extractor(
    model_dir: Path,
    *,
    test: FieldSplit,
    schema: FieldSchema,
    teacher_answers: list[dict[str, Any]] | None,
    is_teacher: bool,
    config: EvalConfig,
    progress: bool = False,
    known: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> tuple[CandidateResult, list[dict[str, Any]]]:
    """Measure the extractor saved in ``model_dir`` on ``test``; its result and its answers.
    ``known``: its speed and cost, given rather than probed (a cascade with an API tier)."""
    model = load_extractor(model_dir)
    rows = extract_in_batches(model, list(test.texts), progress=progress)
    answers = [r["fields"] for r in rows]
    not_in_text = getattr(model, "values_not_in_text", None)
    teacher = answers if is_teacher else None
    if teacher_answers is not None:
        teacher = [r["fields"] for r in teacher_answers]
    quality = field_quality_record(
        answers,
        test,
        schema,
        teacher=teacher,
        resamples=RESAMPLES,
        seed=SEED,
        valid=[r.get("valid", True) for r in rows],
    )
    quality["fields"]["values_not_in_text"] = not_in_text
    invalid = getattr(model, "invalid", None)
    if invalid is not None:
        quality["fields"]["invalid"] = dict(invalid)
    info = model.info.to_dict()
    cost: dict[str, Any] | None
    if known is not None:
        speed, cost = known
        model.close()
    elif (own := model.measured_speed()) is not None:
        # behind an API: the latencies of the real requests in the ledger, and token prices
        speed, cost = own, model.measured_cost()
        model.close()
    else:
        del model  # the speed probe loads its own copy
        speed = measure_speed(Path(model_dir), list(test.texts[:SPEED_TEXTS]), config)
        cost = local_cost(speed, config)
    result = CandidateResult.of(
        info, model_dir=str(model_dir), quality=quality, speed=speed, cost=cost
    )
    return result, rows
