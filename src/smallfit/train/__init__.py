"""Training a transformer classifier with transformers' Trainer: distillation loss, head
warm start, resumable checkpoints, time budgets, temperature.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "STUDENT_MIN_STEPS": "smallfit.train.config",
    "TEACHER_MIN_STEPS": "smallfit.train.config",
    "KDConfig": "smallfit.train.config",
    "Schedule": "smallfit.train.config",
    "TrainConfig": "smallfit.train.config",
    "fit_temperature": "smallfit.train.trainer",
    "kd_loss": "smallfit.train.trainer",
    "last_complete_checkpoint": "smallfit.train.trainer",
    "train_classifier": "smallfit.train.trainer",
    "warmstart_head": "smallfit.train.trainer",
}

__all__ = [
    "STUDENT_MIN_STEPS",
    "TEACHER_MIN_STEPS",
    "KDConfig",
    "Schedule",
    "TrainConfig",
    "fit_temperature",
    "kd_loss",
    "last_complete_checkpoint",
    "train_classifier",
    "warmstart_head",
]

__getattr__ = lazy_exports(__name__, _LAZY)
