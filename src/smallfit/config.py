"""Configs for every stage, as pydantic models with ``extra="forbid"`` (a misspelt key fails
loudly with its path). A whole ``fit`` run is one :class:`FitConfig` that round-trips to YAML."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from smallfit.compress.steps import (
    QUANTIZE,
    CompressionStep,
    DropLayers,
    HealConfig,
    OnnxExport,
    PruneStructured,
    parse_quant,
    short_name,
)
from smallfit.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DataConfig(Strict):
    """Where the data is and how to read it."""

    train: Path
    """Training file (JSONL, CSV or Parquet): the pool the teacher labels."""
    test: Path | None = None
    """Test file; without one, `test_fraction` of train is held out."""
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    """File format; `auto` picks by suffix (.jsonl/.json, .csv, .parquet/.pq)."""
    text_field: str = "text"
    """Field (column) holding the text."""
    label_field: str = "label"
    """Field (column) holding the gold label."""
    dev_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of train carved out as the dev split (stratified, seeded)."""
    max_train: int | None = Field(None, gt=0, description="use a stratified slice of train")
    max_test: int | None = Field(None, gt=0, description="use a stratified slice of test")
    out_of_scope: str | None = None
    """The label of out-of-scope examples (e.g. `oos`): never a class; such rows are left out of
    training, and those in test measure how many the cascade's abstention catches."""
    hold_out_labels: int | list[str] | None = None
    """Labels to treat as unknown, for an out-of-scope evaluation that needs no special data:
    a number (that many labels, drawn with `seed`) or the label names. Their rows leave train
    and dev (no model, the teacher included, sees them) and their test rows join the
    out-of-scope test texts; at least 2 labels must remain. The labels drawn are recorded in
    the run's `data.json` and `cascade.json`."""
    test_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="held out of train when there is no test file"
    )
    seed: int = 0
    """Seed of every split and slice."""

    @field_validator("hold_out_labels")
    @classmethod
    def _check_hold_out(cls, value: int | list[str] | None) -> int | list[str] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("hold_out_labels must be at least 1 (or null for none)")
        if isinstance(value, list):
            if not value:
                raise ValueError("hold_out_labels is an empty list; use null to hold none out")
            repeated = sorted({v for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"hold_out_labels repeats {repeated}")
        return value


STUDENT_MIN_STEPS = 560
"""A transformer student's default ``min_steps``: about what the demo's MiniLM takes on
Banking77 (2 epochs x 282 steps of 32 texts from the 9,003-text pool = 564), so that run keeps its
length and a smaller pool trains at least as long."""
TEACHER_MIN_STEPS = 280
"""A fine-tuned teacher's default ``min_steps``: about one epoch of Banking77 at batch 32 (282
steps), which is what the demo's teacher takes."""


@dataclass(frozen=True)
class Schedule:
    """How long a training run is planned to be, and why (see :meth:`TrainConfig.schedule`)."""

    epochs: float
    """Passes over the training pool handed to the trainer."""
    steps_per_epoch: int
    steps: int
    """Optimizer steps planned (early stopping or the time budget may stop sooner)."""
    raised: bool
    """Whether ``min_steps`` raised the epochs."""
    reason: str

    def describe(self) -> str:
        """One line for the log, e.g. ``10 epochs x 57 steps = 570 steps: ...``."""
        passes = f"{self.epochs:g} epoch" + ("" if self.epochs == 1 else "s")
        plan = f"{passes} x {self.steps_per_epoch} steps = {self.steps} steps"
        return f"{plan}: {self.reason}"


class TrainConfig(Strict):
    """How a transformer classifier is trained (teacher fine-tuning and distillation alike)."""

    epochs: float = Field(3.0, gt=0)
    """Passes over the training pool (fractions allowed); raised to reach `min_steps`."""
    min_steps: int | None = Field(None, ge=0)
    """At least this many optimizer steps: on a pool too small for `epochs` to reach it, whole
    passes are added until it does (early stopping on dev and `time_budget` still stop sooner).
    Unset: 560 for a transformer student, 280 for a fine-tuned teacher (what each takes on
    Banking77's 9,003 training texts at batch 32, so that run is unchanged), none elsewhere
    (decoder students, healing); 0: exactly `epochs`."""
    batch_size: int = Field(32, gt=0)
    """Texts per training step."""
    lr: float = Field(5e-5, gt=0)
    """Learning rate of the encoder (AdamW, linear decay)."""
    head_lr: float | None = Field(None, gt=0, description="defaults to 20 x lr")
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Share of steps spent warming the learning rate up."""
    max_length: int = Field(64, gt=4)
    """Tokens kept per text."""
    bf16: bool = True
    """Train in bfloat16 autocast (AVX512-BF16 or AMX units, where the CPU has them)."""
    freeze_embeddings: bool = True
    """Keep the word-embedding matrix fixed (faster steps, less memory)."""
    freeze_layers: int = Field(0, ge=0)
    """Keep the bottom k encoder layers (and all embeddings) fixed: backward stops above them."""
    head_warmstart: bool = True
    """Fit the head on frozen pooled embeddings before fine-tuning."""
    patience: int = Field(2, ge=0, description="evaluations without dev improvement; 0 = off")
    evals_per_epoch: int = Field(1, gt=0)
    """Dev evaluations (and checkpoints) per epoch."""
    time_budget: str | None = Field(None, description="e.g. '20m', '1h30m'; stops cleanly")
    seed: int = 0
    """Seed of initialisation, dropout and data order."""

    @field_validator("time_budget")
    @classmethod
    def _check_budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def schedule(self, examples: int) -> Schedule:
        """The training length for a pool of ``examples`` texts: ``epochs``, or, when that is
        fewer than ``min_steps`` optimizer steps, the fewest whole passes that reach it."""
        per_epoch = max(1, -(-examples // self.batch_size))
        planned = math.ceil(self.epochs * per_epoch)  # as the trainer counts its steps
        minimum = self.min_steps or 0
        budget = f"; time_budget {self.time_budget} may stop it sooner" if self.time_budget else ""
        if planned >= minimum:
            why = f"train.epochs {self.epochs:g}" + (
                f" (train.min_steps {minimum} already met)" if minimum else ""
            )
            return Schedule(self.epochs, per_epoch, planned, False, why + budget)
        epochs = math.ceil(minimum / per_epoch)
        why = (
            f"train.epochs {self.epochs:g} would be only {planned} steps on {examples} texts, "
            f"raised to reach train.min_steps {minimum}"
        )
        return Schedule(float(epochs), per_epoch, epochs * per_epoch, True, why + budget)


def _with_min_steps(train: TrainConfig, default: int) -> TrainConfig:
    """``train`` with its unset ``min_steps`` filled in with its owner's ``default``."""
    if train.min_steps is not None:
        return train
    return train.model_copy(update={"min_steps": default})


class KDConfig(Strict):
    """Knowledge-distillation loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    temperature: float = Field(2.0, gt=0)
    """Softening temperature T of teacher and student distributions."""
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (KL) term")


class TeacherBase(Strict):
    builds_model: ClassVar[bool] = True
    """Whether a model stands behind the labels (gold labels: none to build, label or measure)."""

    def schedule(self, examples: int) -> Schedule | None:
        """How long its training is planned to be on ``examples`` texts; None: not trained."""
        return None

    def identity(self) -> dict[str, Any]:
        """What identifies this teacher for stage reuse (a rerun rebuilds when it changes)."""
        return self.model_dump(mode="json")


class FinetuneTeacher(TeacherBase):
    """Fine-tune a zoo base on the gold labels: the stand-in for the big model you run today."""

    source: Literal["finetune"] = "finetune"
    """Selects this teacher type."""
    base: str = "mpnet-base"
    """Zoo alias, local HF directory or hub id of the encoder."""
    train: TrainConfig = TrainConfig(epochs=1.0, lr=3e-5, min_steps=TEACHER_MIN_STEPS)
    """How it is trained (`min_steps`, when unset: 280; `patience` stops the passes a small
    pool adds once dev stops improving)."""

    @field_validator("train")
    @classmethod
    def _default_min_steps(cls, train: TrainConfig) -> TrainConfig:
        return _with_min_steps(train, TEACHER_MIN_STEPS)

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)


class ModelTeacher(TeacherBase):
    """A classifier the user already has: a smallfit model dir or a HF sequence-classifier dir."""

    source: Literal["model"] = "model"
    """Selects this teacher type."""
    path: Path
    """A smallfit model directory, or a HF sequence-classification directory."""

    def identity(self) -> dict[str, Any]:
        """The directory's contents count, not just its path: a teacher retrained in place is
        a new teacher."""
        from smallfit.hashing import hash_dir

        content = hash_dir(self.path) if Path(self.path).is_dir() else None
        return {**self.model_dump(mode="json"), "content": content}


class GoldTeacher(TeacherBase):
    """No teacher: the gold labels stand in for it (probabilities are one-hot)."""

    builds_model: ClassVar[bool] = False

    source: Literal["gold"] = "gold"
    """Selects this teacher type."""


DEFAULT_INSTRUCTION = (
    "Classify the text into exactly one of these labels.\n\n{labels}\n\n"
    'Answer with JSON: {{"label": "<one of the labels>"}}.\n\nText: {text}'
)


class LLMPrices(Strict):
    """What the API charges, in US dollars per million tokens (0 for a server you run)."""

    input_per_1m: float = Field(0.0, ge=0)
    """Price of a million prompt tokens."""
    output_per_1m: float = Field(0.0, ge=0)
    """Price of a million completion tokens."""


class LLMTeacher(TeacherBase):
    """An LLM behind an OpenAI-compatible API (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM).

    Unset fields come from the environment: `SMALLFIT_LLM_BASE_URL` (else `OPENAI_BASE_URL`),
    `SMALLFIT_LLM_MODEL`, `SMALLFIT_LLM_PRICE_INPUT` / `SMALLFIT_LLM_PRICE_OUTPUT` (per million
    tokens). The key is read from the variable named by `api_key_env` and is never written
    anywhere."""

    source: Literal["llm"] = "llm"
    """Selects this teacher type."""
    base_url: str | None = None
    """API root, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`."""
    model: str | None = None
    """Model name as the server knows it."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself never goes in a config)."""
    prices: LLMPrices | None = None
    """Prices per million tokens; null: from the environment, else 0."""
    instruction: str = DEFAULT_INSTRUCTION
    """Prompt template: must hold `{text}`; `{labels}` is replaced by the label list (one per
    line, with its description when given). Literal braces are doubled: `{{` `}}`."""
    label_descriptions: dict[str, str] = {}
    """Optional one-line description per label, shown beside its name."""
    few_shot: int = Field(0, ge=0, le=64)
    """Worked examples drawn from the training data (seeded; at most one per label first)."""
    answer: Literal["json-schema", "text"] = "json-schema"
    """`json-schema`: ask the server to constrain the answer to `{"label": <enum>}`;
    `text`: free text, parsed (unparseable answers are counted, never guessed)."""
    probabilities: Literal["logprobs", "samples", "argmax"] = "logprobs"
    """How probabilities are estimated: from token logprobs; from the vote share over
    `samples` answers at temperature 1; or one-hot on the single answer."""
    samples: int = Field(5, ge=2, le=50)
    """Answers per text with `probabilities: samples`."""
    top_logprobs: int = Field(5, ge=1, le=20)
    """Alternatives per answer token with `probabilities: logprobs`."""
    max_tokens: int = Field(48, gt=0)
    """Completion tokens per answer."""
    concurrency: int = Field(4, gt=0, le=256)
    """Requests in flight at once."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout."""
    max_retries: int = Field(6, ge=0)
    """Retries per request on 429, 5xx, timeouts, connection errors and broken responses."""
    budget_usd: float | None = Field(None, gt=0)
    """Stop cleanly before the ledger's total spending passes this (reruns included: the
    ledger lives with the answer cache; requests in flight may add at most one each)."""
    budget_tokens: int | None = Field(None, gt=0)
    """Stop cleanly before using more tokens than this (prompt + completion)."""
    seed: int = 0
    """Seed of the few-shot draw and of sampling."""

    @field_validator("instruction")
    @classmethod
    def _check_instruction(cls, value: str) -> str:
        from smallfit.llm.prompt import check_template

        check_template(value)
        return value

    def identity(self) -> dict[str, Any]:
        """What the answers depend on: not the concurrency, timeouts or budgets."""
        dropped = {"concurrency", "timeout_s", "max_retries", "budget_usd", "budget_tokens"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in dropped}


TeacherConfig = Annotated[
    FinetuneTeacher | ModelTeacher | GoldTeacher | LLMTeacher, Field(discriminator="source")
]


class StudentBase(Strict):
    compressible: ClassVar[bool] = False
    """Whether compression steps apply to it (a PyTorch transformer)."""

    def schedule(self, examples: int) -> Schedule | None:
        """How long its training is planned to be on ``examples`` texts; None: no schedule."""
        return None


class TransformerStudent(StudentBase):
    """A zoo transformer distilled from the teacher's probabilities."""

    compressible: ClassVar[bool] = True

    kind: Literal["transformer"] = "transformer"
    """Selects this student type."""
    name: str = "minilm-l6"
    """Candidate name (model directory under `models/`)."""
    base: str = "minilm-l6"
    """Zoo alias, local HF directory or hub id of the encoder."""
    train: TrainConfig = TrainConfig(epochs=4.0, lr=1e-4, min_steps=STUDENT_MIN_STEPS)
    """How it is trained (`min_steps`, when unset: 560)."""
    kd: KDConfig = KDConfig()
    """The distillation loss."""
    use_gold: bool = Field(False, description="train on gold labels too (default: teacher only)")

    @field_validator("train")
    @classmethod
    def _default_min_steps(cls, train: TrainConfig) -> TrainConfig:
        return _with_min_steps(train, STUDENT_MIN_STEPS)

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)


class LinearStudent(StudentBase):
    """Logistic regression on sparse word and char n-grams (the tiny tier, trains in seconds)."""

    kind: Literal["linear"] = "linear"
    """Selects this student type."""
    name: str = "linear"
    """Candidate name (model directory under `models/`)."""
    word_ngrams: tuple[int, int] = (1, 2)
    """Word n-gram range."""
    char_ngrams: tuple[int, int] | None = (2, 5)
    """Character n-gram range within word boundaries; null for none."""
    max_features: int = Field(200_000, gt=0)
    """Vocabulary cap per n-gram family."""
    C: float = Field(10.0, gt=0)
    """Inverse regularisation strength of the logistic regression."""
    soft_labels: bool = Field(True, description="fit the teacher's probabilities, not argmax")
    min_prob: float = Field(0.01, ge=0, lt=1, description="ignore teacher probs below this")
    use_gold: bool = False
    """Train on gold labels too (default: teacher only)."""
    seed: int = 0
    """Seed of the solver."""


class LoraSettings(Strict):
    """LoRA adapters of a decoder student: the base stays frozen, low-rank updates train."""

    r: int = Field(8, gt=0)
    """Rank of each adapter."""
    alpha: int = Field(16, gt=0)
    """Scaling numerator: an adapter's update is multiplied by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapters' inputs while training."""
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1)
    """Linear layers (by name) that get adapters, e.g. `q_proj`, `k_proj`, `v_proj`, `o_proj`,
    `gate_proj`, `up_proj`, `down_proj` in Llama-class models."""


class DecoderStudent(StudentBase):
    """A causal LM (LLaMA-class) as a sequence classifier, fine-tuned with LoRA on the teacher's
    probabilities; saved as adapter + head, loaded onto the base named by `base`."""

    kind: Literal["decoder"] = "decoder"
    """Selects this student type."""
    name: str = "smollm2-lora"
    """Candidate name (model directory under `models/`)."""
    base: str = "smollm2-135m"
    """Zoo alias, local HF directory, `.gguf` file or hub id of the causal LM."""
    prompt: str = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    """What the model reads: `{text}` (exactly once) marks the text, the rest is kept whole
    (`train.max_length` truncates only the text). The default is the chat format of SmolLM2
    and other ChatML models: the head then reads the state where the model would begin its
    answer. Write your base's own format, or `{text}` for the bare text."""
    lora: LoraSettings = LoraSettings()
    """The adapters."""
    train: TrainConfig = TrainConfig(
        epochs=2.0, batch_size=16, lr=1e-3, head_lr=5e-3, head_warmstart=False
    )
    """How it is trained (`lr`: the adapters; `freeze_layers`: adapters of the bottom layers
    stay fixed; `freeze_embeddings` has no effect, the base is frozen). No head warm start by
    default: an LM's last-token states are large and unnormalised, and a head fitted on them
    alone overfits (SNIPS, 16 texts per label: 70% test accuracy with it, 84% without)."""
    kd: KDConfig = KDConfig()
    """The distillation loss."""
    use_gold: bool = Field(False, description="train on gold labels too (default: teacher only)")

    @field_validator("prompt")
    @classmethod
    def _one_text(cls, value: str) -> str:
        if value.count("{text}") != 1:
            raise ValueError(f"the prompt must hold {{text}} exactly once, got {value!r}")
        return value

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)


StudentConfig = Annotated[
    TransformerStudent | LinearStudent | DecoderStudent, Field(discriminator="kind")
]


class EvalConfig(Strict):
    """What to measure per candidate."""

    latency_queries: int = Field(200, gt=0)
    """Batch-1 queries timed per thread setting."""
    warmup: int = Field(20, ge=0)
    """Untimed queries first."""
    throughput_batch: int = Field(32, gt=0)
    """Batch size of the throughput measurement."""
    throughput_batches: int = Field(10, gt=0)
    """Batches timed for throughput."""
    threads: list[int | Literal["all"]] = [1, "all"]
    """Thread settings for latency: numbers, or `all` (every usable core)."""
    ece_bins: int = Field(15, gt=1)
    """Equal-width confidence bins of the expected calibration error."""
    isolate: bool = Field(True, description="measure speed and memory in a fresh subprocess")
    machine_hour_usd: float = Field(0.10, ge=0)
    """What an hour of this machine costs (US dollars), for local candidates' cost per million
    queries. The default is about a 2-vCPU cloud instance on demand."""


class SelectConfig(Strict):
    """How the winner is chosen: smallest candidate over the floor and under the ceiling."""

    metric: Literal["accuracy", "macro_f1", "teacher_agreement"] = "accuracy"
    """Quality metric for the floor and the Pareto front."""
    quality_floor: str = "0.98 * teacher"
    """`'0.9'` (absolute) or `'0.98 * teacher'` (relative to the teacher's metric). With
    `teacher.source: gold` (no teacher candidate) or `metric: teacher_agreement` (not measured
    for the teacher itself) it must be absolute: the default is refused at load, not guessed."""
    latency_ceiling_ms: float | None = Field(None, gt=0, description="batch-1 p50, 1 thread")
    size: Literal["bytes_on_disk", "parameters"] = "bytes_on_disk"
    """What 'smallest' means."""

    @field_validator("quality_floor")
    @classmethod
    def _check_floor(cls, value: str) -> str:
        parse_floor(value)
        return value


class AbstainConfig(Strict):
    """When a tier is too unsure to answer or escalate, the cascade answers `label` instead."""

    label: str = "oos"
    """The answer given when abstaining: the out-of-scope label of the data. In a fit config it
    defaults to `data.out_of_scope` when that is set, and must then equal it."""
    in_scope_loss: float = Field(0.02, ge=0, lt=1)
    """Share of in-scope dev queries allowed to abstain: sets the threshold."""
    tier: int = Field(0, ge=0)
    """Index of the tier that abstains: 0, the cheapest, sees every query; a later (local)
    tier screens only the queries escalated to it."""
    score: str = "auto"
    """How in-scope a query looks to the abstaining tier (higher: more in scope): `auto` (the
    default: `knn` where the tier gives embeddings, else `max_prob`), `max_prob`,
    `margin`, `entropy` (its probabilities), `energy` (its logits' log-sum-exp at its
    temperature), `knn` (cosine similarity to the 10th nearest training embedding),
    `mahalanobis` (distance to the nearest class mean of the training embeddings, shared
    covariance) or `relative_mahalanobis` (the same, less the distance to all of them). `energy`
    needs a tier that gives logits (transformer, ONNX, linear); the last three need embeddings
    (transformer; ONNX as the `onnx` step now exports it). The route stage measures every score
    the tier gives on the out-of-scope test texts (`data.out_of_scope`, `data.hold_out_labels`);
    `cascade.json` and the report say how each did."""

    @field_validator("score")
    @classmethod
    def _check_score(cls, value: str) -> str:
        from smallfit.route.scores import AUTO, score_names

        if value != AUTO and value not in score_names():
            known = ", ".join([AUTO, *score_names()])
            raise ValueError(f"unknown score {value!r} (known: {known})")
        return value


class RouteConfig(Strict):
    """The cascade: tiers cheapest first, each answers when its confidence clears its threshold;
    thresholds are calibrated on dev for a target and checked on test."""

    tiers: list[str] | None = None
    """Candidate names of the run, cheapest first (or model directories); default: the selected
    candidate, then the teacher. A name that is neither fails when the config is loaded."""
    confidence: Literal["max_prob", "margin", "entropy"] = "max_prob"
    """How sure a tier is: top probability, top-1 minus top-2, or 1 - normalised entropy."""
    target: str = "accuracy >= teacher - 0.5pt"
    """What the calibration must reach: `accuracy >= teacher - 0.5pt` (`teacher`: the last
    tier; or `accuracy >= 0.9`), `escalation <= 10%`, or `cost <= 5` (US dollars per million
    queries)."""
    abstain: AbstainConfig | None = None
    """Abstain (answer the out-of-scope label) when the abstaining tier is very unsure."""
    timeout_s: float | None = Field(10.0, gt=0)
    """A remote tier (an API) slower than this per batch is given up on: the best local
    answer stands, flagged as a fallback."""
    recommend_min_local: float = Field(0.25, ge=0, le=1)
    """When the teacher is selected (no local model alone reaches the floor), the cascade is
    recommended instead if it meets its target with at least this share of test queries
    answered before the teacher."""

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        parse_target(value)
        return value


class ServeConfig(Strict):
    """The HTTP server: where it listens, how it batches, what it refuses, who may administer."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_batch: int = Field(32, gt=0)
    """Texts per micro-batch for a local tier."""
    max_wait_ms: float = Field(0.0, ge=0)
    """How long a micro-batch waits for company after its first text. 0 (the default): no
    waiting; a batch is whatever queued while the previous one ran, which batches under load
    and adds no latency when idle (waiting 2 ms cut single-connection throughput to a third on
    2 cores)."""
    max_texts: int = Field(64, gt=0)
    """Texts per request (more: 422)."""
    max_text_chars: int = Field(2000, gt=0)
    """Characters per text (more: 422)."""
    max_body_bytes: int = Field(1_048_576, gt=0)
    """Request body size (more: 413)."""
    top_k: int = Field(3, gt=0)
    """Probabilities returned per text."""
    threads: int | None = Field(None, gt=0)
    """Compute threads for local models; default: all usable cores but one (at least one)."""
    admin_token_env: str = "SMALLFIT_ADMIN_TOKEN"
    """The environment variable holding the bearer token of the admin routes (unset: admin
    routes answer 403)."""
    fallback: Literal["best-local", "error"] = "best-local"
    """When a remote tier is slow (its timeout) or down: answer with the best local answer,
    flagged, or fail the request with 503."""
    escalation_log: Path | None = None
    """JSONL file each escalated query is appended to with the answering tier's label (a
    training file for the next `smallfit fit`)."""
    watch: bool = False
    """Reload the model when its directory's manifest changes."""
    watch_interval_s: float = Field(2.0, gt=0)
    shadow: Path | None = None
    """A candidate model run beside the live one on live traffic (answers unaffected)."""


class CompressCandidate(Strict):
    """One compressed candidate, spelled out: a name and its steps in order."""

    name: str
    """Suffix of the candidate's name: `<student>-<name>`."""
    steps: list[CompressionStep] = Field(min_length=1)
    """The steps, each a `method` (`drop-layers`, `prune`, `magnitude`, `onnx`, `int8-dynamic`,
    `int8-static`, `int4-weight`; each step's options below) with its options."""


class CompressGrid(Strict):
    """A grid of candidates: every combination of layers x pruning x quantization."""

    layers: list[int | None] = [None, 3]
    """Layers kept (`drop-layers`, alternate); null keeps them all."""
    prune: list[float] = [0.0]
    """Share of attention heads and of FFN neurons removed (`prune`); 0 prunes nothing."""
    quantize: list[str] = ["int8-dynamic"]
    """How the result runs: `torch` (PyTorch fp32), `onnx` (float ONNX) or ONNX with a
    quantization method: `int8-dynamic`, `int8-static` or `int4-weight`."""
    heal: HealConfig = HealConfig()
    """Healing after dropping layers or pruning."""

    @field_validator("quantize")
    @classmethod
    def _known_quantize(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in QUANTIZE:
                raise ValueError(f"{value!r} is not one of {', '.join(QUANTIZE)}")
        return values

    def expand(self) -> list[CompressCandidate]:
        """The candidates in build order (least compressed first, so prefixes are shared)."""
        out = []
        for layers in self.layers:
            for share in sorted(self.prune):
                for quant in self.quantize:
                    steps: list[Any] = []
                    parts = []
                    if layers is not None:
                        steps.append(DropLayers(keep=layers, heal=self.heal))
                        parts.append(DropLayers.short.format(keep=layers))
                    if share > 0:
                        steps.append(PruneStructured(heads=share, ffn=share, heal=self.heal))
                        parts.append(PruneStructured.short.format(percent=round(share * 100)))
                    if quant != "torch":
                        steps.append(OnnxExport())
                    if quant not in ("torch", "onnx"):
                        steps.append(parse_quant(quant))
                    parts.append(short_name(quant))
                    if len(steps) > 0:
                        out.append(CompressCandidate(name="-".join(parts), steps=steps))
        return out


class CompressConfig(Strict):
    """Compressed candidates built from the transformer students, measured like the others."""

    students: list[str] | None = None
    """Names of the transformer students to compress; null: every transformer student (there
    must be one)."""
    grid: CompressGrid | None = CompressGrid()
    """A grid of candidates; null for none."""
    candidates: list[CompressCandidate] = []
    """Candidates spelled out step by step, built after the grid's."""
    budget: str | None = Field("30m", description="stop building new candidates after this long")
    check_texts: int = Field(512, gt=0)
    """Texts each step checks itself on: dev first, then training texts (never test)."""

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def expand(self) -> list[CompressCandidate]:
        grid = self.grid.expand() if self.grid else []
        everything = [*grid, *self.candidates]
        names = [c.name for c in everything]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"compressed candidate names must be unique; repeated: {dupes}")
        return everything


class ReportConfig(Strict):
    """The report's prices and volumes (stated on the page): what queries cost today, at growth,
    and when owning the small model pays off."""

    volume_per_month: int = Field(1_000_000, gt=0)
    """Queries a month today."""
    growth: list[float] = Field(default_factory=lambda: [2.0, 10.0])
    """Multiples of today's volume costed beside it."""
    api_input_per_1m_usd: float = Field(0.15, ge=0)
    """Reference API price per million prompt tokens, used when the teacher is not an API LLM
    (an LLM teacher's own measured tokens and prices are used when it is)."""
    api_output_per_1m_usd: float = Field(0.60, ge=0)
    """Reference API price per million completion tokens (as above)."""
    hour_usd: float | None = Field(None, ge=0)
    """Price of a machine-hour for self-hosting; null: `evaluate.machine_hour_usd`."""
    utilization: float = Field(0.5, gt=0, le=1)
    """Share of a machine's measured throughput planned for (headroom for peaks)."""
    amortize_months: float = Field(12.0, gt=0)
    """Months over which one-off costs (labelling, training, compression) are spread."""
    worst_classes: int = Field(10, gt=0)
    """Classes shown first in "where it is weaker"."""
    confused_pairs: int = Field(8, ge=0)
    """Most confused label pairs shown, each with example texts."""
    examples_per_pair: int = Field(3, ge=0)


def _default_students() -> list[StudentConfig]:
    return [TransformerStudent(), LinearStudent()]


class FitConfig(Strict):
    """The whole run: data -> teacher labels -> students -> evaluate -> select."""

    run_dir: Path = Path("runs/default")
    """Where the run is written (and reused on a rerun)."""
    seed: int = 0
    """Reserved for stages without their own seed."""
    data: DataConfig
    """The data."""
    teacher: TeacherConfig = FinetuneTeacher()
    """The teacher: `source: finetune | model | gold`."""
    students: list[StudentConfig] = Field(default_factory=lambda: _default_students())
    """The students, each `kind: transformer | linear | decoder`."""
    compress: CompressConfig | None = None
    """Compressed variants of the transformer students (layer dropping, pruning, ONNX, int8);
    null for none."""
    evaluate: EvalConfig = EvalConfig()
    """What is measured per candidate."""
    select: SelectConfig = SelectConfig()
    """How the winner is chosen."""
    route: RouteConfig | None = RouteConfig()
    """The cascade calibrated after selection; null for none. Left out, it is on when there is
    a teacher model and off with `teacher.source: gold` (its default tiers end with the
    teacher); a route section with a gold teacher must name its `tiers`."""
    report: ReportConfig = ReportConfig()
    """Prices and volumes of the report's cost section."""

    @field_validator("students")
    @classmethod
    def _unique_names(cls, students: list[Any]) -> list[Any]:
        names = [s.name for s in students]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"student names must be unique; repeated: {', '.join(dupes)}")
        if "teacher" in names:
            raise ValueError("'teacher' is reserved for the teacher candidate")
        return students

    @field_validator("compress")
    @classmethod
    def _expandable(cls, compress: CompressConfig | None) -> CompressConfig | None:
        if compress is not None:
            compress.expand()
        return compress

    @model_validator(mode="before")
    @classmethod
    def _following_defaults(cls, data: Any) -> Any:
        from smallfit.config_checks import fill_following_defaults

        return fill_following_defaults(data)

    @model_validator(mode="after")
    def _consistent(self) -> FitConfig:
        """Parts that contradict each other fail here, before any work, each named."""
        from smallfit.config_checks import ConfigConflicts, conflicts

        found = conflicts(self)
        if found:
            raise ConfigConflicts(found)
        return self


_FLOOR = re.compile(r"^\s*(?P<x>\d+(\.\d+)?)\s*(\*\s*teacher)?\s*$")


def all_configs() -> list[type[BaseModel]]:
    """Every config class a user writes: FitConfig and everything reachable from its fields
    (each member of a union: every teacher, student and compression step), then ServeConfig
    and its reachable classes; each once, in the order first reached. The docs and the YAML
    round-trip test are built from this list, so a new config cannot be left out of them."""
    found: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in found:
                return
            found.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
            return
        for arg in get_args(annotation):
            visit(arg)

    visit(FitConfig)
    visit(ServeConfig)
    return found


def parse_floor(text: str) -> tuple[float, bool]:
    """``'0.9'`` -> (0.9, False); ``'0.98 * teacher'`` -> (0.98, True)."""
    match = _FLOOR.match(text)
    if not match:
        raise ValueError(f"quality_floor must look like '0.9' or '0.98 * teacher', got {text!r}")
    return float(match["x"]), "teacher" in text


_TARGET = re.compile(
    r"^\s*(?P<what>accuracy|escalations?|cost)\s*(?P<op>>=|<=)\s*"
    r"(?:(?P<teacher>teacher)\s*(?P<sign>[-+])\s*)?(?P<x>\d+(\.\d+)?)\s*(?P<unit>pt|%|\$)?\s*$"
)


@dataclass(frozen=True)
class Target:
    """A calibration target: ``kind`` accuracy (``value`` absolute, or ``teacher`` + ``value``
    as a difference), escalation (``value`` a share) or cost (``value`` USD per 1M queries)."""

    kind: Literal["accuracy", "escalation", "cost"]
    value: float
    relative_to_teacher: bool = False


def parse_target(text: str) -> Target:
    """``'accuracy >= teacher - 0.5pt'``, ``'accuracy >= 0.92'``, ``'escalation <= 10%'``,
    ``'cost <= 5'`` (USD per 1M queries) -> :class:`Target`."""
    match = _TARGET.match(text)
    expected = (
        "targets look like 'accuracy >= teacher - 0.5pt', 'accuracy >= 0.92', "
        f"'escalation <= 10%' or 'cost <= 5' (USD per 1M queries); got {text!r}"
    )
    if not match:
        raise ValueError(expected)
    what, op, x, unit = match["what"], match["op"], float(match["x"]), match["unit"]
    if what == "accuracy":
        if op != ">=" or unit == "$":
            raise ValueError(expected)
        if match["teacher"]:
            delta = x / 100 if unit in ("pt", "%") else x
            return Target("accuracy", -delta if match["sign"] == "-" else delta, True)
        value = x / 100 if unit in ("pt", "%") else x
        if not 0 < value <= 1:
            raise ValueError(f"an accuracy target is a share in (0, 1] or a percentage: {text!r}")
        return Target("accuracy", value)
    if op != "<=" or match["teacher"]:
        raise ValueError(expected)
    if what.startswith("escalation"):
        if unit == "$":
            raise ValueError(expected)
        value = x / 100 if unit in ("%", "pt") else x
        if not 0 <= value <= 1:
            raise ValueError(f"an escalation target is a share in [0, 1] or a percentage: {text!r}")
        return Target("escalation", value)
    if unit in ("%", "pt"):
        raise ValueError(expected)
    return Target("cost", x)


_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(text: str) -> float:
    """``'1h30m'`` -> 5400.0 seconds; ``'45s'``, ``'20m'`` likewise."""
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise ValueError(f"durations look like '20m', '1h30m' or '45s', got {text!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    """One line per problem, each naming the dotted key path."""
    from smallfit.config_checks import ConfigConflicts

    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ConfigConflicts):  # each names its own keys
            lines += [f"  {c.message}" for c in cause.conflicts]
            continue
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with clear errors naming the file."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such config file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    return raw


def load_fit_config(path: str | Path) -> FitConfig:
    """Read and validate a fit config YAML (relative paths: from the working directory)."""
    file = Path(path)
    raw = read_yaml_mapping(file)
    try:
        return FitConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(file))) from exc


def dump_fit_config(config: FitConfig) -> str:
    """YAML text that :func:`load_fit_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
