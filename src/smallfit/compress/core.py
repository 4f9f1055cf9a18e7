"""Applying a list of compression steps, with every check done before any work."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

# the built-in steps' handlers register themselves on import
from smallfit.compress import gguf_steps as _gguf_steps  # noqa: F401
from smallfit.compress import onnx_steps as _onnx_steps  # noqa: F401
from smallfit.compress import ort_int4 as _ort_int4  # noqa: F401
from smallfit.compress import ort_quantize as _ort_quantize  # noqa: F401
from smallfit.compress import torch_steps as _torch_steps  # noqa: F401
from smallfit.compress import vocab_trim as _vocab_trim  # noqa: F401
from smallfit.compress.base import HealData, StepContext, handler_of, precondition_of
from smallfit.compress.steps import METHODS, CompressionStep
from smallfit.errors import SmallfitError
from smallfit.hashing import hash_json
from smallfit.logs import beside, routed
from smallfit.models.base import (
    MANIFEST,
    manifest_with_architecture,
    read_manifest,
)
from smallfit.models.loading import load_model as load

_STEP = TypeAdapter(CompressionStep)


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
            manifest = precondition_of(step)(step, manifest)
        except SmallfitError as exc:
            raise SmallfitError(f"step {i} ({step.method}): {exc}") from None
    return manifest


STEPS_REVISION = 2
"""Raised when a step makes a different model from the same config and source, so that a run
cached by an older smallfit is compressed again rather than reused (2: a fused export feeds
all-zero token types from two operators, ``onnx_fusion.zero_segments``)."""


def step_key(source_key: str, steps: list[Any], heal_source: str | None) -> str:
    """The identity of the model made by ``steps`` from the model identified by ``source_key``
    (and this smallfit's :data:`STEPS_REVISION`)."""
    return hash_json(
        {
            "source": source_key,
            "steps": [s.model_dump(mode="json") for s in steps],
            "heal": heal_source,
            "revision": STEPS_REVISION,
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
    pool_texts: list[str] | None = None,
) -> Any:
    """Apply ``steps`` to the model in ``model_dir`` (a classifier, or a tagger: ``onnx`` and
    ``int8-dynamic`` apply to it); the result is saved in ``out_dir``.

    Every step is checked against the model it will meet before anything runs, so an
    inapplicable step (int8 on an already int8 model, ONNX export of a linear model, ...) fails
    at once. ``check_texts`` are the user's texts the steps verify themselves on; ``heal`` the
    teacher's probabilities that steps removing weights distil against (default: the model's
    own, on ``check_texts``). ``cache`` = (directory, key of the source model) keeps every
    intermediate model there, so candidates sharing a prefix of steps build it once.
    ``pool_texts``: every training text, for ``trim-vocab`` (default: the healing texts, else
    ``check_texts``).
    """
    if not steps:
        raise SmallfitError("no compression steps given")
    if not check_texts:
        raise SmallfitError("compression needs some of your texts to check each step against")
    check_steps(manifest_with_architecture(model_dir), steps)
    steps = [step.before(steps[i + 1 :]) for i, step in enumerate(steps)]

    out = Path(out_dir)
    lineage_steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smallfit-compress-") as tmp:
        context = StepContext(
            list(check_texts),
            heal,
            Path(tmp),
            progress,
            pool=list(pool_texts) if pool_texts is not None else None,
            source=Path(model_dir).resolve(),
        )
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
            metrics = handler_of(step)(step, current, target, context)
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
