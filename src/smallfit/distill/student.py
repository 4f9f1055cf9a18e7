"""Students distilled from the teacher's probabilities: one handler per student config type.

By default a student sees only the teacher's labels for the training pool (the user has no gold
labels there); gold labels are used to evaluate, and to train only when ``use_gold`` is set.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.data import Dataset
from smallfit.distill.config import (
    DecoderStudent,
    LinearStudent,
    StaticStudent,
    TransformerStudent,
)
from smallfit.models.base import BaseClassifier
from smallfit.registry import Registry
from smallfit.run.layout import work_of
from smallfit.teach import one_hot
from smallfit.train.distributed import is_main, wait_for_everyone

STUDENTS: Registry[Callable[..., Any]] = Registry("student")


def distill_student(
    config: Any,
    dataset: Dataset,
    *,
    train_probs: np.ndarray,
    dev_probs: np.ndarray,
    out_dir: Path,
    teacher_name: str = "teacher",
    progress: bool = True,
) -> BaseClassifier:
    """Train the student described by ``config`` on the teacher's probabilities; save it."""
    handler = STUDENTS.handler(config)
    targets = train_probs
    if config.use_gold:
        targets = 0.5 * train_probs + 0.5 * one_hot(dataset.train.labels, dataset.labels)
    lineage = {
        "teacher": teacher_name,
        "trained_on": "teacher + gold labels" if config.use_gold else "teacher labels only",
        "train_examples": len(dataset.train),
    }
    model = handler(
        config,
        dataset,
        targets=targets,
        dev_probs=dev_probs,
        out_dir=Path(out_dir),
        lineage=lineage,
        progress=progress,
    )
    if is_main():  # launched on several processes, the first one writes
        model.save(out_dir)
    return model


@STUDENTS.register(TransformerStudent)
def _transformer(
    config: TransformerStudent,
    dataset: Dataset,
    *,
    targets: np.ndarray,
    dev_probs: np.ndarray,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: bool,
) -> BaseClassifier:
    from smallfit import zoo
    from smallfit.models.transformer import TransformerClassifier

    model = TransformerClassifier.from_base(
        zoo.resolve(config.base),
        labels=dataset.labels,
        name=config.name,
        max_length=config.train.max_length,
        lineage={"base": config.base, **lineage},
        seed=config.train.seed,
    )
    return _train(
        model,
        config,
        data=(dataset.train.texts, targets, dataset.dev.texts, dev_probs),
        out_dir=out_dir,
        progress=progress,
    )


@STUDENTS.register(DecoderStudent)
def _decoder(
    config: DecoderStudent,
    dataset: Dataset,
    *,
    targets: np.ndarray,
    dev_probs: np.ndarray,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: bool,
) -> BaseClassifier:
    from smallfit.models.decoder import DecoderClassifier

    model = DecoderClassifier.from_base(
        config.base,
        labels=dataset.labels,
        name=config.name,
        lora_r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        lora_targets=config.lora.target_modules,
        prompt=config.prompt,
        max_length=config.train.max_length,
        lineage={"base": config.base, **lineage},
        seed=config.train.seed,
    )
    model.lineage["lora"] = config.lora.model_dump()
    return _train(
        model,
        config,
        data=(dataset.train.texts, targets, dataset.dev.texts, dev_probs),
        out_dir=out_dir,
        progress=progress,
    )


def _train(
    model: Any,
    config: TransformerStudent | DecoderStudent,
    *,
    data: tuple[list[str], np.ndarray, list[str], np.ndarray],
    out_dir: Path,
    progress: bool,
) -> BaseClassifier:
    """The shared KD loop (:func:`smallfit.train.train_classifier`) for a PyTorch student on
    (train texts, targets, dev texts, dev targets), with checkpoints in ``<out_dir>.work``
    (removed once it is done)."""
    from smallfit.train import train_classifier

    work = work_of(out_dir)
    summary = train_classifier(
        model,
        data,
        train=config.train,
        kd=config.kd,
        output_dir=work,
        progress=progress,
    )
    model.lineage["training"] = {
        **summary,
        "config": config.train.model_dump(),
        "kd": config.kd.model_dump(),
    }
    wait_for_everyone()  # every process is done with the checkpoints
    if is_main():
        shutil.rmtree(work, ignore_errors=True)
    return model


@STUDENTS.register(LinearStudent)
def _linear(
    config: LinearStudent,
    dataset: Dataset,
    *,
    targets: np.ndarray,
    dev_probs: np.ndarray,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: bool,
) -> BaseClassifier:
    from smallfit.models.linear import LinearClassifier

    model = LinearClassifier.fit(
        dataset.train.texts,
        targets,
        labels=dataset.labels,
        **linear_args(config),
        name=config.name,
        lineage=lineage,
    )
    dev_agree = float(
        (model.predict_proba(dataset.dev.texts).argmax(1) == dev_probs.argmax(1)).mean()
    )
    model.lineage["training"] = {"dev_agreement": dev_agree}
    return model


@STUDENTS.register(StaticStudent)
def _static(
    config: StaticStudent,
    dataset: Dataset,
    *,
    targets: np.ndarray,
    dev_probs: np.ndarray,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: bool,
) -> BaseClassifier:
    from smallfit import zoo
    from smallfit.distill.static import fit_static
    from smallfit.models.logistic import UNSEEN_LOGIT
    from smallfit.train import fit_temperature

    model = fit_static(
        dataset.train.texts,
        targets,
        labels=dataset.labels,
        source=zoo.resolve(config.base),
        settings=config,
        name=config.name,
        lineage={"base": config.base, **lineage},
        progress=progress,
    )
    logits = model.outputs(dataset.dev.texts, need=frozenset({"logits"})).logits
    assert logits is not None  # asked for
    # over the labels the head saw: an unseen one's fixed logit would drive the fit
    seen = model.intercept > UNSEEN_LOGIT / 2
    targets_seen = dev_probs[:, seen] / np.clip(
        dev_probs[:, seen].sum(1, keepdims=True), 1e-12, None
    )
    model.temperature = fit_temperature(logits[:, seen], targets_seen)
    dev_agree = float((logits.argmax(1) == dev_probs.argmax(1)).mean())
    model.lineage["training"] = {
        "dev_agreement": dev_agree,
        "temperature": round(model.temperature, 4),
    }
    return model


def linear_args(config: LinearStudent) -> dict[str, Any]:
    """The linear backend's arguments from the ``linear`` student config (the backend takes
    plain arguments, never the user's config)."""
    return config.model_dump(exclude={"kind", "name", "use_gold"})
