"""The students' configs: a transformer, a linear or static model, a LoRA decoder, or an extract
task's tagger or generator (``kind`` selects)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from smallfit.schema import Strict
from smallfit.train.config import (
    STUDENT_MIN_STEPS,
    KDConfig,
    Schedule,
    TrainConfig,
    with_min_steps,
)


def _prompt_with_text(value: str) -> str:
    """A student's prompt holds ``{text}`` exactly once."""
    if value.count("{text}") != 1:
        raise ValueError(f"the prompt must hold {{text}} exactly once, got {value!r}")
    return value


class StudentBase(Strict):
    compressible: ClassVar[bool] = False
    """Whether compression steps apply to it (a PyTorch transformer)."""
    task: ClassVar[str] = "classify"
    """The task type it learns (`classify` or `extract`)."""
    distributed: ClassVar[bool] = False
    """Whether its training spreads over the processes of an `accelerate launch`
    (transformers' Trainer); the others train on the first process alone."""

    def schedule(self, examples: int) -> Schedule | None:
        """How long its training is planned to be on ``examples`` texts; None: no schedule."""
        return None


class TransformerStudent(StudentBase):
    """A zoo transformer distilled from the teacher's probabilities."""

    compressible: ClassVar[bool] = True
    distributed: ClassVar[bool] = True

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
        return with_min_steps(train, STUDENT_MIN_STEPS)

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


class StaticStudent(StudentBase):
    """A static-embedding model (model2vec-style): each vocabulary token's vector distilled once
    from an encoder, a text the normalised sum of its tokens' vectors, and a softmax head fitted
    on the teacher's probabilities. It serves without torch, in tens of microseconds a text."""

    kind: Literal["static"] = "static"
    """Selects this student type."""
    name: str = "static"
    """Candidate name (model directory under `models/`)."""
    base: str = "minilm-l6"
    """The encoder the token vectors come from: a zoo alias, a local Hugging Face directory (a
    distilled transformer student's model directory is one) or a hub id."""
    dims: int | None = Field(256, gt=0)
    """Principal components kept of the token vectors; null keeps the encoder's width."""
    sif: float | None = Field(1e-4, gt=0)
    """Frequent tokens are scaled by sif / (sif + p), p a Zipf estimate of the token's
    frequency from its vocabulary rank; null: no scaling."""
    C: float = Field(100.0, gt=0)
    """Inverse regularisation strength of the head (a logistic regression)."""
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

    distributed: ClassVar[bool] = True

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
        return _prompt_with_text(value)

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)


class TaggerStudent(StudentBase):
    """An extract task's student: a zoo encoder tagging the tokens of each field's values (BIO),
    trained on the teacher's answers aligned to spans in the text."""

    compressible: ClassVar[bool] = True
    task: ClassVar[str] = "extract"
    kind: Literal["tagger"] = "tagger"
    """Selects this student type."""
    name: str = "minilm-l6-tagger"
    """Candidate name (model directory under `models/`)."""
    base: str = "minilm-l6"
    """Zoo alias, local HF directory or hub id of the encoder."""
    train: TrainConfig = TrainConfig(epochs=3.0, lr=1e-4, head_lr=2e-3)
    """How it is trained (`patience`, `evals_per_epoch` and `head_warmstart` do not apply)."""

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(examples)


CHATML = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class GeneratorStudent(StudentBase):
    """An extract task's generative student: a causal LM fine-tuned with LoRA to write each
    document's fields as compact JSON (the loss on the answer's tokens only), its adapters
    merged, converted to one GGUF file (f16) by llama.cpp's converter, and run by llama.cpp,
    greedy under the schema's grammar, so every answer parses. The compression grid's
    `gguf-q8_0` and `gguf-q4_k_m` quantize it."""

    compressible: ClassVar[bool] = True
    task: ClassVar[str] = "extract"
    kind: Literal["generator"] = "generator"
    """Selects this student type."""
    name: str = "smollm2-json"
    """Candidate name (model directory under `models/`)."""
    base: str = "smollm2-135m"
    """Zoo alias, local HF directory, `.gguf` file or hub id of the causal LM (one llama.cpp's
    converter takes: Llama, Qwen, Gemma, ...)."""
    prompt: str = CHATML
    """What the model reads: `{text}` (exactly once) marks the text. The default is the chat
    format of SmolLM2 and other ChatML models. The fields need not be listed: the model learns
    them from the answers."""
    lora: LoraSettings = LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=LLAMA_LINEAR)
    """The adapters (every linear layer of a Llama-class block by default)."""
    train: TrainConfig = TrainConfig(epochs=1.0, batch_size=16, lr=1e-3, max_length=128)
    """How it is trained (`lr`: the adapters; `max_length` cuts the text, never the prompt or
    the answer)."""
    max_examples: int | None = Field(2000, gt=0)
    """Train on a seeded random sample of this many training texts (null: all of them). A
    135M decoder learns about 4 texts a second on 2 cores."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Longest answer generated; null: the longest training answer plus 16 tokens. A longer
    answer is cut, does not parse and counts as invalid."""

    @field_validator("prompt")
    @classmethod
    def _one_text(cls, value: str) -> str:
        return _prompt_with_text(value)

    def schedule(self, examples: int) -> Schedule | None:
        return self.train.schedule(min(examples, self.max_examples or examples))


StudentConfig = Annotated[
    TransformerStudent
    | LinearStudent
    | StaticStudent
    | DecoderStudent
    | TaggerStudent
    | GeneratorStudent,
    Field(discriminator="kind"),
]
