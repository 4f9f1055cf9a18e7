"""The typed records of a run: what ``results/<name>.json``, ``results.json``, ``cascade.json``,
``data.json``, ``stages.json`` and ``labels/summary.json`` hold.

Every record forbids unknown fields and rejects a bool or a string where a number belongs, and
NaN; a file from an older run either loads (fields added since default, see each field) or
fails with one line naming the file and the field (:func:`smallfit.run.store.invalid`).

Records are written with :func:`dump` (``exclude_unset``): a field a writer did not set stays
absent on disk, so a file read and written again keeps its shape. Fields are declared in the
order the files list them.

Free-form parts stay dicts: a model's ``lineage`` (its manifest's), the host ``environment``,
the run's ``config`` (a :class:`smallfit.config.FitConfig` dump, checked where it is used), and
a cascade's ``out_of_scope`` summary.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

Num = int | float
"""A measured number as the writer gave it (an int stays an int on disk)."""


def _interval(value: list[Num]) -> list[Num]:
    if len(value) != 2 or not all(math.isfinite(v) for v in value) or value[0] > value[1]:
        raise ValueError("not a [low, high] interval")
    return value


Interval = Annotated[list[Num], AfterValidator(_interval)]
"""A 95% interval ``[low, high]``."""


class Record(BaseModel):
    """The base of every run record: strict, closed, finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def dump(self) -> dict[str, Any]:
        """The JSON-ready dict written to disk (fields never set stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)


# -- one candidate --------------------------------------------------------------------------------


class ClassScore(Record):
    precision: Num
    recall: Num
    f1: Num
    support: int


class Intervals(Record):
    """95% intervals; the gold figures' are None where no test text has a gold label."""

    accuracy: Interval | None
    macro_f1: Interval | None
    teacher_agreement: Interval | None = None
    ece: Interval | None
    field_f1: Interval | None = None  # an extract task's micro F1 against gold


class FieldScore(Record):
    precision: Num
    recall: Num
    f1: Num
    exact: Num
    support: int


class FieldScores(Record):
    """An extract task's figures (see :mod:`smallfit.evaluate.fields`): against gold where the
    test texts have it, and against the teacher's answers."""

    micro_precision: Num | None
    micro_recall: Num | None
    micro_f1: Num | None
    macro_f1: Num | None
    doc_exact: Num | None
    json_valid: Num
    per_field: dict[str, FieldScore] = {}
    teacher_micro_f1: Num | None = None
    """Micro F1 against the teacher's answers (1 for the teacher itself)."""
    values_not_in_text: int | None = None
    """Values a generative extractor wrote that are not in their text (None: a tagger, whose
    values are always read from the text)."""
    invalid: dict[str, int] | None = None
    """An LLM's answers that could not be read, by reason: ``not-json``, ``off-schema``, or
    ``failed`` (no answer after retries). None: a local extractor."""


class Paired(Record):
    """A paired difference from the teacher (model - teacher) and its 95% interval."""

    diff: Num
    ci95: Interval


class Bootstrap(Record):
    method: str
    resamples: int
    seed: int
    level: Num


class UnseenVocab(Record):
    """A model with a trimmed vocabulary on the test texts that hold a token it dropped, and on
    the others (gold rows only)."""

    texts: int
    """Test texts holding a dropped token."""
    gold_texts: int
    """Those of them with a gold label (what ``accuracy`` is measured on)."""
    accuracy: Num | None
    accuracy_on_others: Num | None


class Quality(Record):
    """Quality on the test split against gold and the teacher (classification). The gold
    figures are measured on the ``n_gold`` texts with a gold label, and are None without any."""

    accuracy: Num | None
    macro_f1: Num | None
    teacher_agreement: Num | None = None
    ece: Num | None
    n: int
    n_gold: int | None = None  # absent before 2026-11-30: every test text had gold
    unanswered: int = 0  # absent before 2026-11-24
    per_class: dict[str, ClassScore] = {}
    ci95: Intervals | None = None  # the three below: absent before 2026-11-29
    vs_teacher: dict[str, Paired] | None = None
    bootstrap: Bootstrap | None = None
    fields: FieldScores | None = None  # an extract task's (``accuracy`` is then doc exact)
    unseen_vocab: UnseenVocab | None = None  # a trimmed vocabulary's (absent before 2026-11-30)

    def value(self, metric: str) -> float | None:
        """The figure selection and routing compare (``accuracy``, ``macro_f1``, an extract
        task's ``field_f1``, ``field_macro_f1``, ``doc_exact``, ``field_agreement`` ...)."""
        if metric in FIELD_METRICS:
            v = getattr(self.fields, FIELD_METRICS[metric], None) if self.fields else None
        else:
            v = getattr(self, metric, None) if metric in type(self).model_fields else None
        return None if v is None or isinstance(v, (dict, BaseModel)) else float(v)

    def interval(self, metric: str) -> list[float] | None:
        """The 95% interval of ``metric`` as measured; None for results without one."""
        return None if self.ci95 is None else getattr(self.ci95, metric, None)

    def paired(self, metric: str) -> Paired | None:
        """``metric`` minus the teacher's on the same texts, with its paired 95% interval; None
        when not measured (the teacher itself, ``teacher_agreement``, older results)."""
        return (self.vs_teacher or {}).get(metric)


FIELD_METRICS = {
    "field_f1": "micro_f1",
    "field_macro_f1": "macro_f1",
    "doc_exact": "doc_exact",
    "field_agreement": "teacher_micro_f1",
}
"""An extract task's metric names -> their figure in :class:`FieldScores`."""


def resolve_metric(metric: str | None, candidates: list[CandidateResult]) -> str:
    """``metric`` when given; else ``accuracy`` when every candidate measured it on every test
    text (all have gold labels), else ``teacher_agreement``. For an extract task: ``field_f1``
    (micro F1 against gold), else ``field_agreement`` (micro F1 against the teacher)."""
    if metric is not None:
        return metric
    if candidates and all(c.quality.fields is not None for c in candidates):
        every = all(
            c.quality.fields is not None
            and c.quality.fields.micro_f1 is not None
            and c.quality.n_gold in (None, c.quality.n)
            for c in candidates
        )
        return "field_f1" if every else "field_agreement"
    every_gold = all(
        c.quality.accuracy is not None and c.quality.n_gold in (None, c.quality.n)
        for c in candidates
    )
    return "accuracy" if every_gold else "teacher_agreement"


class Latency(Record):
    p50_ms: Num
    p95_ms: Num | None = None
    p99_ms: Num | None = None
    mean_ms: Num | None = None
    n: int | None = None
    samples_ms: list[Num] | None = None  # absent before 2026-11-24
    estimated: bool = False  # a remote cascade's estimate from its tiers
    tokens_per_s: Num | None = None
    """A generative model's decoding rate over the batch-1 latency queries."""


_THROUGHPUT = re.compile(r"^throughput_b(\d+)_per_s$")


class Speed(Record):
    """Latency per thread count, batched throughput and memory (local models); the ledger's
    request latencies (an API model); an estimate (a cascade with a remote tier)."""

    threads: dict[str, Latency]
    throughput_per_s: Num | None = None  # on disk: throughput_b<batch>_per_s
    throughput_batch: int | None = None
    requests_per_s: Num | None = None
    concurrency: int | None = None
    peak_rss_bytes: int | None = None
    load_rss_bytes: int | None = None
    cpu_threads_all: int | None = None
    isolated: bool | None = None
    remote: bool = False
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _throughput_key(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = [k for k in data if isinstance(k, str) and _THROUGHPUT.match(k)]
        if not keys:
            return data
        out = {}
        for k, v in data.items():  # in place, so the key order survives
            if k in keys:
                if k == keys[0]:
                    out["throughput_per_s"] = v
                continue
            out[k] = v
        if len(keys) > 1:
            out[keys[1]] = data[keys[1]]  # rejected as an unknown field
        return out

    @model_serializer(mode="wrap")
    def _write_throughput_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if "throughput_per_s" not in data:
            return dict(data)
        key = f"throughput_b{self.throughput_batch or 32}_per_s"
        return {(key if k == "throughput_per_s" else k): v for k, v in data.items()}

    def p50_ms(self, threads: int = 1) -> float | None:
        one = self.threads.get(str(threads))
        return None if one is None else float(one.p50_ms)


class Roofline(Record):
    flops_per_query: Num
    tokens_per_query: Num
    p50_ms: Num
    achieved_gflops: Num
    precision: Literal["fp32", "bf16", "int8"]
    peak_gflops: Num | None = None
    peak_source: str | None = None
    share_of_peak: Num | None = None
    threads: int | None = None


class Cost(Record):
    per_1m_queries_usd: Num | None = None
    prompt_tokens_per_query: Num | None = None
    completion_tokens_per_query: Num | None = None
    basis: str


class CascadeTiers(Record):
    """The cascade candidate's tiers, thresholds and measured escalation on test."""

    tiers: list[str]
    thresholds: list[Num]
    escalation: Num | None = None
    answered_by: list[Num] | None = None


class CandidateResult(Record):
    """One candidate, measured (``results/<name>.json``; ``results.json``'s ``candidates``)."""

    name: str
    backend: str
    model_dir: str
    parameters: int
    bytes_on_disk: int
    lineage: dict[str, Any] = {}
    quality: Quality
    speed: Speed
    roofline: Roofline | None = None  # absent before 2026-11-23
    cost: Cost | None = None  # absent before 2026-11-24
    cascade: CascadeTiers | None = None  # the cascade candidate only

    @classmethod
    def of(
        cls,
        info: dict[str, Any],
        *,
        model_dir: str,
        quality: dict[str, Any],
        speed: dict[str, Any],
        cost: dict[str, Any] | None,
        roofline: dict[str, Any] | None = None,
        cascade: dict[str, Any] | None = None,
    ) -> CandidateResult:
        """The one constructor: a model's ``info`` (``ModelInfo.to_dict()``: name, backend,
        parameters, size on disk, lineage) and what was measured. Evaluation and the cascade
        stage both build their results here."""
        fields: dict[str, Any] = {
            "name": info["name"],
            "backend": info["backend"],
            "model_dir": model_dir,
            "parameters": info["parameters"],
            "bytes_on_disk": info["bytes_on_disk"],
            "lineage": info["lineage"],
            "quality": quality,
            "speed": speed,
            "roofline": roofline,
            "cost": cost,
        }
        if cascade is not None:
            fields["cascade"] = cascade
        return cls.model_validate(fields)


# -- the run --------------------------------------------------------------------------------------


class NotBuilt(Record):
    name: str
    reason: str


class Recommendation(Record):
    name: str | None
    reason: str


class SelectionRecord(Record):
    """What selection chose and why (``results.json``'s ``selection``; the printed line)."""

    chosen: str | None
    recommended: Recommendation | None = None  # absent before 2026-11-29
    metric: str
    floor: Num
    ceiling_ms: Num | None = None
    reason: str
    resolution: list[str] = []  # absent before 2026-11-29
    backend: str | None = None  # the rest: only when something was chosen
    quality: dict[str, Any] | None = None
    latency_1t_ms: dict[str, Num | None] | None = None
    throughput_per_s: Num | None = None
    throughput_batch: int | None = None
    peak_rss_bytes: int | None = None
    bytes_on_disk: int | None = None
    parameters: int | None = None
    vs_teacher: dict[str, Num | None] | None = None


class Point(Record):
    """The cascade at one set of thresholds."""

    thresholds: list[Num]
    answered_by: list[Num]
    reach: list[Num]
    abstained: Num
    escalation: Num
    accuracy: Num
    last_tier_agreement: Num
    cost_per_1m_usd: Num | None = None
    mean_latency_ms: Num | None = None


class CascadeSummary(Record):
    """The calibrated cascade (``cascade.json``; ``results.json``'s ``cascade``)."""

    target: str
    confidence: str
    tiers: list[str]
    thresholds: list[Num]
    abstain_threshold: Num | None = None
    reference_accuracy: dict[str, Num]
    dev: Point
    test: Point | None = None
    met_on_dev: bool
    met_on_test: bool | None = None  # absent before 2026-11-29
    curve: list[Point]
    out_of_scope: dict[str, Any] | None = None
    model_dir: str
    scored_against: Literal["gold", "teacher"] = "gold"
    """What its accuracies are measured against: gold labels, or (when some dev or test text
    has none) the teacher's answers."""


class RunResults(Record):
    """``results.json``: the host, every candidate, the selection and the cascade."""

    environment: dict[str, Any]
    candidates: list[CandidateResult]
    selection: SelectionRecord | None = None
    not_built: list[NotBuilt] = []  # absent before 2026-11-23
    config: dict[str, Any] | None = None
    seconds: Num | None = None
    cascade: CascadeSummary | None = None

    @model_validator(mode="after")
    def _chosen_is_a_candidate(self) -> RunResults:
        chosen = None if self.selection is None else self.selection.chosen
        if chosen is not None and self.candidate(chosen) is None:
            raise ValueError(f"selection.chosen '{chosen}' is not among the candidates")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def candidate(self, name: str | None) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == name), None)


class DataSummary(Record):
    """``data.json``: split sizes, labels, held-out labels and the data key."""

    train: int
    dev: int
    test: int
    labels: list[str]
    held_out_labels: list[str] = []
    out_of_scope: int = 0
    key: str | None = None
    config: dict[str, Any] | None = None


class LabelsSummary(Record):
    """``labels/summary.json``: the teacher's labels of the pool."""

    train_gold_agreement: Num | None = None  # before 2026-11-30: train only, every row gold
    gold_agreement: Num | None = None
    """The teacher's agreement with gold on the pool's (train + dev) texts that have a gold
    label: its audit, before anything is distilled from it."""
    gold_agreement_ci95: Interval | None = None
    gold_rows: int | None = None
    train: int
    dev: int
    unanswered: dict[str, int] = {}
    seconds: Num


class StageRecord(Record):
    """One entry of ``stages.json``."""

    key: str
    seconds: Num
    finished: Num
