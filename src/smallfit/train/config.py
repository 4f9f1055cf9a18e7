"""How a transformer classifier is trained (teacher fine-tuning, distillation and healing
alike): the schedule and the distillation loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field, field_validator

from smallfit.schema import Strict, parse_duration

STUDENT_MIN_STEPS = 560
"""A transformer student's default ``min_steps``: two epochs of Banking77 (2 x 282 steps of 32
texts from the 9,003-text pool = 564), what the demo's MiniLM took before it ran six, so that a
smaller pool trains at least that long."""
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
    Unset: 560 for a transformer student, 280 for a fine-tuned teacher (two epochs and one of
    Banking77's 9,003 training texts at batch 32), none elsewhere
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
    """Train in bfloat16 autocast where the CPU runs it natively (AVX-512 through oneDNN,
    AVX512-BF16, AMX); a CPU without AVX-512 trains in float32, which is then far faster
    (`smallfit.models.precision`)."""
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


def with_min_steps(train: TrainConfig, default: int) -> TrainConfig:
    """``train`` with its unset ``min_steps`` filled in with its owner's ``default``."""
    if train.min_steps is not None:
        return train
    return train.model_copy(update={"min_steps": default})


class KDConfig(Strict):
    """Knowledge-distillation loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    temperature: float = Field(2.0, gt=0)
    """Softening temperature T of teacher and student distributions."""
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (KL) term")
