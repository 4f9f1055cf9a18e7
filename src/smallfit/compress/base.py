"""What a compression step's handler is given (:class:`StepContext`, :class:`HealData`), and
:func:`register_step`, the one registration of a method's handler and precondition.

A method is its config class in :mod:`smallfit.compress.steps` (which names it, gives its short
name in grid candidates and says whether it quantizes) and one handler registered here with its
precondition; the step union, the method list, the grid's choices and the CLI help are derived
from the configs. Handler modules import this module, never :mod:`smallfit.compress.core`, so
there is no import cycle.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from smallfit.models.base import load
from smallfit.registry import Registry

Handler = Callable[..., dict[str, Any]]
"""(step, model_dir, out_dir, context) -> metrics; it writes a model directory to out_dir."""
Precondition = Callable[..., dict[str, Any]]
"""(step, manifest) -> the manifest the step will produce, or a SmallfitError saying why not."""

_HANDLERS: Registry[Handler] = Registry("compression step")
_PRECONDITIONS: Registry[Precondition] = Registry("compression step")
H = TypeVar("H", bound=Handler)


def register_step(config: type, *, precondition: Precondition) -> Callable[[H], H]:
    """Decorator above a step's handler: ``@register_step(OrtInt4Weight, precondition=...)``
    registers the handler and the check run on every step before any work starts."""

    def decorate(handler: H) -> H:
        _HANDLERS.register(config)(handler)
        _PRECONDITIONS.register(config)(precondition)
        return handler

    return decorate


def handler_of(step: object) -> Handler:
    return _HANDLERS.handler(step)


def precondition_of(step: object) -> Precondition:
    return _PRECONDITIONS.handler(step)


def registered() -> set[type]:
    """The step configs with a handler (the test checks every method has one)."""
    return _HANDLERS.types() & _PRECONDITIONS.types()


@dataclass(frozen=True)
class HealData:
    """Texts with the teacher's probabilities (columns in the model's label order) that
    steps removing weights distil against; dev picks the best checkpoint and the temperature."""

    train_texts: list[str]
    train_probs: np.ndarray
    dev_texts: list[str]
    dev_probs: np.ndarray
    source: str

    @classmethod
    def from_model(
        cls, model_dir: str | Path, texts: list[str], *, dev_share: float = 0.1
    ) -> HealData:
        """Self-distillation: the model's own probabilities on ``texts`` (a teacher's, when
        ``model_dir`` holds one); a seeded tenth (at most 500) is held out as dev."""
        model = load(model_dir)
        probs = model.predict_proba(texts)
        order = np.random.default_rng(0).permutation(len(texts))
        n_dev = min(500, max(1, int(len(texts) * dev_share)))
        dev, train = order[:n_dev], order[n_dev:]
        return cls(
            train_texts=[texts[i] for i in train],
            train_probs=probs[train],
            dev_texts=[texts[i] for i in dev],
            dev_probs=probs[dev],
            source=str(Path(model_dir)),
        )


@dataclass(frozen=True)
class StepContext:
    """What a step may use besides the model: the user's texts to check itself on, healing
    data (None: steps heal against the model as it was before compression), a scratch
    directory for checkpoints, and whether to show progress."""

    check_texts: list[str]
    heal: HealData | None
    work_dir: Path
    progress: bool = False
    pool: list[str] | None = None
    """Every training text there is (what a vocabulary is trimmed to); None: the healing
    texts, else the check texts."""
    source: Path | None = None
    """The model the first step met (its tokenizer is the untrimmed one)."""

    def pool_texts(self) -> list[str]:
        if self.pool is not None:
            return self.pool
        if self.heal is not None:
            return [*self.heal.train_texts, *self.heal.dev_texts]
        return self.check_texts

    def heal_data(self, model_dir: Path) -> HealData:
        return self.heal or HealData.from_model(model_dir, self.check_texts)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(src: Path, out: Path) -> None:
    """The tokenizer files of ``src`` (those it has) copied beside an exported graph."""
    for file in _TOKENIZER_FILES:
        if (src / file).is_file():
            shutil.copy2(src / file, out / file)


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Raise the named loggers ("" = root) to ERROR for the block."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_graph(
    module: Any, sample: Any, dest: Path, *, opset: int, outputs: list[str], dynamo: bool = True
) -> None:
    """``module`` (input_ids, attention_mask -> ``outputs``) written to ``dest`` by the dynamo
    exporter (``dynamo=False``: the TorchScript one, whose graphs ONNX Runtime's optimizer can
    fuse), batch and sequence dynamic, traced on ``sample`` (a tokenized batch). The exporter's
    own warnings and log lines (deprecations, optional torchvision ops) are not actionable for a
    user; what matters is checked by the caller: parity with PyTorch."""
    import torch

    inputs = ["input_ids", "attention_mask"]
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dynamic: dict[str, Any] = {
            "dynamic_shapes": {name: {0: batch, 1: seq} for name in inputs},
            "external_data": False,
        }
    else:
        axes = {name: {0: "batch", 1: "seq"} for name in inputs}
        dynamic = {"dynamic_axes": axes | {name: {0: "batch"} for name in outputs}}
    with torch.inference_mode(), warnings.catch_warnings(), quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (sample["input_ids"], sample["attention_mask"]),
            str(dest),
            dynamo=dynamo,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            verbose=False,
            **dynamic,
        )
