"""The teacher's config: one of a fine-tuned stand-in, a model the user has, the gold labels or
an LLM behind an OpenAI-compatible API (``source`` selects)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from smallfit.llm.prompt import DEFAULT_INSTRUCTION
from smallfit.schema import Strict
from smallfit.train.config import (
    TEACHER_MIN_STEPS,
    Schedule,
    TrainConfig,
    with_min_steps,
)


class TeacherBase(Strict):
    builds_model: ClassVar[bool] = True
    """Whether a model stands behind the labels (gold labels: none to build, label or measure)."""
    needs_gold: ClassVar[bool] = False
    """Whether it needs a gold label on every row (it trains on them, or it is them); otherwise
    it labels the rows without one."""

    def schedule(self, examples: int) -> Schedule | None:
        """How long its training is planned to be on ``examples`` texts; None: not trained."""
        return None

    def distributed(self, task: str) -> bool:
        """Whether building it for a ``task`` trains on every process of an `accelerate
        launch` (transformers' Trainer); otherwise the first process builds it and the others
        load it."""
        return False

    def identity(self, task: str = "classify") -> dict[str, Any]:
        """What identifies this teacher of a ``task`` for stage reuse (a rerun rebuilds when it
        changes)."""
        return self.model_dump(mode="json")

    def own_labels(self) -> list[str] | None:
        """The labels the teacher knows before it is built (a model's); None: the data's."""
        return None


class FinetuneTeacher(TeacherBase):
    """Fine-tune a zoo base on the gold labels: the stand-in for the big model you run today."""

    needs_gold: ClassVar[bool] = True

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
        return with_min_steps(train, TEACHER_MIN_STEPS)

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)

    def distributed(self, task: str) -> bool:
        return task == "classify"  # the Trainer; an extract task's tagger has its own loop

    def identity(self, task: str = "classify") -> dict[str, Any]:
        """A ``base`` that is a local directory counts by its contents, not just its path."""
        from smallfit.zoo import local_base

        return {**self.model_dump(mode="json"), **local_base(self.base)}


class ModelTeacher(TeacherBase):
    """A model the user already has. A classify task takes a smallfit classifier directory or a
    HF sequence-classification directory; an extract task a smallfit extractor directory or a
    HF token-classification directory whose labels are BIO tags (`O`, `B-city`, `I-city`)."""

    source: Literal["model"] = "model"
    """Selects this teacher type."""
    path: Path
    """A smallfit model directory, or a HF sequence- (classify) or token- (extract)
    classification directory."""

    def identity(self, task: str = "classify") -> dict[str, Any]:
        """The directory's contents count, not just its path: a teacher retrained in place is
        a new teacher."""
        from smallfit.hashing import hash_dir

        content = hash_dir(self.path) if Path(self.path).is_dir() else None
        return {**self.model_dump(mode="json"), "content": content}

    def own_labels(self) -> list[str] | None:
        """The labels in its manifest (a smallfit model) or ``id2label`` (a HF classifier);
        None when it cannot tell (building the teacher then says why)."""
        import json

        path = Path(self.path)
        try:
            if (path / "smallfit.json").is_file():
                labels = json.loads((path / "smallfit.json").read_text("utf-8"))["labels"]
                return [str(y) for y in labels]
            config = json.loads((path / "config.json").read_text("utf-8"))
            id2label = config.get("id2label") or {}
            return [str(id2label[k]) for k in sorted(id2label, key=int)] or None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


class GoldTeacher(TeacherBase):
    """No teacher: the gold labels stand in for it (probabilities are one-hot)."""

    builds_model: ClassVar[bool] = False
    needs_gold: ClassVar[bool] = True

    source: Literal["gold"] = "gold"
    """Selects this teacher type."""


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
    instruction: str | None = None
    """Prompt template: must hold `{text}`. A classify task's `{labels}` is replaced by the
    label list (one per line, with its description when given), an extract task's `{fields}`
    by the field list. Literal braces are doubled: `{{` `}}`. Null: the task's own (see
    `smallfit.llm.prompt.DEFAULT_INSTRUCTION` and
    `smallfit.llm.field_prompt.DEFAULT_FIELD_INSTRUCTION`)."""
    label_descriptions: dict[str, str] = {}
    """Optional one-line description per label (an extract task: per field), shown beside its
    name."""
    few_shot: int = Field(0, ge=0, le=64)
    """Worked examples drawn from the training data's gold rows (seeded; a classify task's at
    most one per label first)."""
    answer: Literal["json-schema", "text"] = "json-schema"
    """`json-schema`: ask the server to constrain the answer to `{"label": <enum>}` (an
    extract task: to the fields' JSON schema); `text`: free text, parsed (unparseable answers
    are counted, never guessed)."""
    probabilities: Literal["logprobs", "samples", "argmax"] = "logprobs"
    """How probabilities are estimated: from token logprobs; from the vote share over
    `samples` answers at temperature 1; or one-hot on the single answer. A classify task's
    only: an extract task asks once, at temperature 0."""
    samples: int = Field(5, ge=2, le=50)
    """Answers per text with `probabilities: samples`."""
    top_logprobs: int = Field(5, ge=1, le=20)
    """Alternatives per answer token with `probabilities: logprobs`."""
    max_tokens: int | None = Field(None, gt=0)
    """Completion tokens per answer; null: 48 for a classify task; for an extract task 256, or
    64 + 12 per field when that is more (an answer cut short is not JSON, and is counted so)."""
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
    context: list[dict[str, Any]] = []
    """Chat messages sent before the text's user message, verbatim: a captured template's
    system prompt and turns (`smallfit task` writes them)."""
    answer_key: str | None = None
    """The answer is a JSON object with the label under this key (a captured task's answers);
    null: `{"label": ...}` or a bare label."""
    response_format: dict[str, Any] | None = None
    """Sent as it is instead of smallfit's label schema (the format the application sends)."""
    recorded: Path | None = None
    """JSON Lines of answers this upstream already gave for this prompt: `{text, upstream,
    prompt_tokens, completion_tokens, latency_ms}` (`smallfit task` writes it). They go into the
    answer cache before labelling, so no text is asked twice; their latencies and tokens stand
    for the teacher's speed and cost, and none counts as spending."""
    recorded_field: str = "upstream"
    """The field of `recorded` that holds the upstream's answer."""

    @field_validator("instruction")
    @classmethod
    def _check_instruction(cls, value: str | None) -> str | None:
        from smallfit.llm.prompt import check_template

        if value is not None:
            check_template(value)
        return value

    def identity(self, task: str = "classify") -> dict[str, Any]:
        """What the answers depend on: not the concurrency, timeouts or budgets."""
        dropped = {"concurrency", "timeout_s", "max_retries", "budget_usd", "budget_tokens"}
        # at their defaults, the captured-task fields leave an older run's identity as it was
        fields = type(self).model_fields
        dropped |= {k for k in _CAPTURED if getattr(self, k) == fields[k].default}
        out = {k: v for k, v in self.model_dump(mode="json").items() if k not in dropped}
        if task == "classify":  # unset, they read as they did before they could be unset
            for name, before in _WERE_DEFAULTS.items():
                if out[name] is None:
                    out[name] = before
        return out

    def template(self, task: str) -> str:
        """The instruction, or the ``task``'s own."""
        if self.instruction is not None:
            return self.instruction
        if task == "extract":
            from smallfit.llm.field_prompt import DEFAULT_FIELD_INSTRUCTION

            return DEFAULT_FIELD_INSTRUCTION
        return DEFAULT_INSTRUCTION

    def answer_tokens(self, task: str, *, fields: int = 0) -> int:
        """``max_tokens``, or the ``task``'s own: an extract task's grows with its ``fields``
        (a strict schema writes every one, null when absent)."""
        if self.max_tokens is not None:
            return self.max_tokens
        if task == "extract":
            return max(FIELD_MAX_TOKENS, 64 + 12 * fields)
        return LABEL_MAX_TOKENS


LABEL_MAX_TOKENS, FIELD_MAX_TOKENS = 48, 256
_WERE_DEFAULTS: dict[str, Any] = {
    "instruction": DEFAULT_INSTRUCTION,
    "max_tokens": LABEL_MAX_TOKENS,
}
_CAPTURED = ("context", "answer_key", "response_format", "recorded", "recorded_field")

TeacherConfig = Annotated[
    FinetuneTeacher | ModelTeacher | GoldTeacher | LLMTeacher, Field(discriminator="source")
]
