"""Applying a list of compression steps, with every check done before any work."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from smallfit.compress.steps import CompressionStep
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_json
from smallfit.logs import beside, routed
from smallfit.models.base import (
    MANIFEST,
    BaseClassifier,
    load,
    manifest_with_architecture,
    read_manifest,
)
from smallfit.registry import Registry

_STEP = TypeAdapter(CompressionStep)
METHODS = (
    "drop-layers",
    "prune",
    "magnitude",
    "onnx",
    "int8-dynamic",
    "int8-static",
    "int4-weight",
)


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

    def heal_data(self, model_dir: Path) -> HealData:
        return self.heal or HealData.from_model(model_dir, self.check_texts)


# A handler: (step, model_dir, out_dir, context) -> metrics dict; it writes a model dir.
HANDLERS: Registry[Callable[..., dict[str, Any]]] = Registry("compression step")
# A precondition: (step, manifest) -> the manifest the step will produce (or raises).
PRECONDITIONS: Registry[Callable[..., dict[str, Any]]] = Registry("compression step")


def parse_step(text: str) -> Any:
    """``'int8-dynamic'``, ``'drop-layers:keep=3'`` or ``'prune:heads=0.25,ffn=0.3'``.

    Options of the healing phase are written ``heal.epochs=2``."""
    method, _, options = text.partition(":")
    fields: dict[str, Any] = {"method": method.strip()}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SmallfitError(f"step {text!r}: options look like key=value, got {item!r}")
        lowered = value.strip().lower()
        parsed = {"true": True, "false": False, "none": None}.get(lowered, value.strip())
        target = fields
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parsed
    return validate_step(fields, where=f"step {text!r}")


def validate_step(fields: dict[str, Any], *, where: str) -> Any:
    """A step config from a dict, with an error that names the field and the known methods."""
    try:
        return _STEP.validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'method'}: {e['msg']}" for e in exc.errors()
        )
        raise SmallfitError(f"{where}: {problems} (known methods: {', '.join(METHODS)})") from exc


def check_steps(manifest: dict[str, Any], steps: list[Any]) -> dict[str, Any]:
    """Every step against the model it will meet; returns the final manifest or raises."""
    for i, step in enumerate(steps, start=1):
        try:
            manifest = PRECONDITIONS.handler(step)(step, manifest)
        except SmallfitError as exc:
            raise SmallfitError(f"step {i} ({step.method}): {exc}") from None
    return manifest


def step_key(source_key: str, steps: list[Any], heal_source: str | None) -> str:
    """The identity of the model made by ``steps`` from the model identified by ``source_key``."""
    return hash_json(
        {
            "source": source_key,
            "steps": [s.model_dump(mode="json") for s in steps],
            "heal": heal_source,
        }
    )


@routed(lambda *_, out_dir, **__: beside(out_dir))  # library output: beside the model
def compress(
    model_dir: str | Path,
    steps: list[Any],
    *,
    out_dir: str | Path,
    check_texts: list[str],
    heal: HealData | None = None,
    name: str | None = None,
    progress: bool = False,
    cache: tuple[Path, str] | None = None,
) -> BaseClassifier:
    """Apply ``steps`` to the model in ``model_dir``; the result is saved in ``out_dir``.

    Every step is checked against the model it will meet before anything runs, so an
    inapplicable step (int8 on an already int8 model, ONNX export of a linear model, ...) fails
    at once. ``check_texts`` are the user's texts the steps verify themselves on; ``heal`` the
    teacher's probabilities that steps removing weights distil against (default: the model's
    own, on ``check_texts``). ``cache`` = (directory, key of the source model) keeps every
    intermediate model there, so candidates sharing a prefix of steps build it once.
    """
    if not steps:
        raise SmallfitError("no compression steps given")
    if not check_texts:
        raise SmallfitError("compression needs some of your texts to check each step against")
    check_steps(manifest_with_architecture(model_dir), steps)

    out = Path(out_dir)
    lineage_steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smallfit-compress-") as tmp:
        context = StepContext(list(check_texts), heal, Path(tmp), progress)
        current = Path(model_dir)
        for i, step in enumerate(steps, start=1):
            cached = None
            if cache is not None:
                key = step_key(cache[1], steps[:i], heal.source if heal else None)
                cached = cache[0] / key[:16]
                if (cached / MANIFEST).is_file():
                    lineage_steps.append(read_manifest(cached)["lineage"]["compression"][-1])
                    current = cached
                    continue
            # A step writes into scratch space; only a finished one reaches the cache, so a
            # failed or killed step never looks built on the next run.
            target = Path(tmp) / f"step{i}"
            started = time.monotonic()
            metrics = HANDLERS.handler(step)(step, current, target, context)
            seconds = round(time.monotonic() - started, 2)
            record = {**step.model_dump(mode="json"), "metrics": metrics, "seconds": seconds}
            lineage_steps.append(record)
            if cached is not None:  # the cached model carries its own last step
                built = load(target)
                built.lineage["compression"] = [record]
                built.save(target)
                target = _publish(target, cached)
            current = target
        model = load(current)
        previous = read_manifest(model_dir).get("lineage", {}).get("compression", [])
        model.lineage["compression"] = [*previous, *lineage_steps]
        model.lineage["compressed_from"] = str(Path(model_dir).resolve())
        if name:
            model.name = name
        if out.exists():
            shutil.rmtree(out)
        model.save(out)
    return load(out)


def _publish(built: Path, dest: Path) -> Path:
    """Move a finished model into the cache: copied beside ``dest`` first, then renamed, so a
    half-copied directory never carries ``dest``'s name."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(partial))
    partial.rename(dest)
    return dest


# Built-in steps register themselves on import.
from smallfit.compress import onnx_steps as _onnx_steps  # noqa: E402, F401
from smallfit.compress import ort_int4 as _ort_int4  # noqa: E402, F401
from smallfit.compress import ort_quantize as _ort_quantize  # noqa: E402, F401
from smallfit.compress import torch_steps as _torch_steps  # noqa: E402, F401
