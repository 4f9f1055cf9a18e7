"""Quality of an extract task's answers, against gold or against the teacher.

Values are compared after trimming, folding case and collapsing runs of spaces (``"New  York"``
and ``"new york"`` match); a field's values are a multiset, so a list field scores each value.
For each field: precision, recall, F1 (over values) and exact match (the share of documents
where its values equal the reference's, both empty included). Over fields: micro figures (all
values pooled) and macro F1 (the mean over the fields the reference or the answers use).
Document exact match: every field equal. JSON validity: the share of answers that parsed into
the schema (an answer that did not counts as an empty object in every other figure).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from smallfit.fields import FieldSchema, Values

_SPACE = re.compile(r"\s+")


def norm(value: str) -> str:
    return _SPACE.sub(" ", value.strip()).casefold()


@dataclass(frozen=True)
class FieldScore:
    precision: float
    recall: float
    f1: float
    exact: float
    support: int
    """Reference values of this field."""


@dataclass(frozen=True)
class FieldQuality:
    """Field extraction quality over ``n`` documents."""

    n: int
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_f1: float
    doc_exact: float
    json_valid: float
    per_field: dict[str, FieldScore]
    micro_f1_ci: list[float] | None = None
    """95% bootstrap interval of micro F1 (documents resampled)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def weakest(self, k: int = 5) -> list[tuple[str, FieldScore]]:
        """The ``k`` fields with the lowest F1 among those the reference uses."""
        used = [(n, s) for n, s in self.per_field.items() if s.support]
        return sorted(used, key=lambda item: (item[1].f1, -item[1].support))[:k]


def _f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0 if not fn else 0.0
    r = tp / (tp + fn) if tp + fn else 1.0 if not fp else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return p, r, f


def counts(
    answers: Sequence[Values], reference: Sequence[Values], schema: FieldSchema
) -> np.ndarray:
    """Per document and field: true positives, false positives, false negatives and whether
    the field matches exactly; shape (documents, fields, 4)."""
    out = np.zeros((len(answers), len(schema), 4), dtype=np.int64)
    for d, (got, want) in enumerate(zip(answers, reference, strict=True)):
        for f, name in enumerate(schema):
            a = Counter(norm(v) for v in got.get(name, ()))
            b = Counter(norm(v) for v in want.get(name, ()))
            tp = sum((a & b).values())
            out[d, f] = (tp, sum(a.values()) - tp, sum(b.values()) - tp, a == b)
    return out


def field_quality(
    answers: Sequence[Values],
    reference: Sequence[Values],
    schema: FieldSchema,
    *,
    valid: Sequence[bool] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> FieldQuality:
    """The figures above for ``answers`` against ``reference`` (one dict per document)."""
    c = counts(answers, reference, schema)
    per_field = {}
    for f, name in enumerate(schema):
        tp, fp, fn, exact = c[:, f].sum(axis=0)
        p, r, f1 = _f1(tp, fp, fn)
        exact_share = float(exact) / max(len(c), 1)
        per_field[name] = FieldScore(float(p), float(r), float(f1), exact_share, int(tp + fn))
    tp, fp, fn = (c[:, :, i].sum() for i in range(3))
    mp, mr, mf = (float(v) for v in _f1(tp, fp, fn))
    used = [s.f1 for n, s in per_field.items() if s.support or _predicted(c, schema, n)]
    macro = float(np.mean(used)) if used else 1.0
    doc_exact = float(c[:, :, 3].all(axis=1).mean()) if len(c) else 0.0
    ok = float(np.mean(valid)) if valid is not None and len(valid) else 1.0
    return FieldQuality(
        n=len(c),
        micro_precision=mp,
        micro_recall=mr,
        micro_f1=mf,
        macro_f1=macro,
        doc_exact=doc_exact,
        json_valid=ok,
        per_field=per_field,
        micro_f1_ci=micro_f1_interval(c, resamples=resamples, seed=seed) if resamples else None,
    )


def _predicted(c: np.ndarray, schema: FieldSchema, name: str) -> bool:
    return bool(c[:, schema.names.index(name), 1].sum())


def micro_f1_interval(c: np.ndarray, *, resamples: int, seed: int) -> list[float]:
    """95% percentile bootstrap interval of micro F1, resampling documents."""
    per_doc = c[:, :, :3].sum(axis=1).astype(np.float64)  # (docs, 3)
    if not len(per_doc):
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_doc), size=(resamples, len(per_doc)))
    sums = per_doc[idx].sum(axis=1)  # (resamples, 3)
    tp, fp, fn = sums[:, 0], sums[:, 1], sums[:, 2]
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return [float(np.quantile(f1, 0.025)), float(np.quantile(f1, 0.975))]
