"""Applying a list of compression steps, with every check done before any work."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from smallfit.compress.steps import OnnxExport, OrtDynamicInt8
from smallfit.errors import SmallfitError
from smallfit.models.base import BaseClassifier, load, read_manifest
from smallfit.registry import Registry

CompressionStep = Annotated[OnnxExport | OrtDynamicInt8, Field(discriminator="method")]
_STEP = TypeAdapter(CompressionStep)

# A handler: (step, model_dir, out_dir, check_texts) -> metrics dict; it writes a model dir.
HANDLERS: Registry[Callable[..., dict[str, Any]]] = Registry("compression step")
# A precondition: (step, manifest) -> the manifest the step will produce (or raises).
PRECONDITIONS: Registry[Callable[..., dict[str, Any]]] = Registry("compression step")


def parse_step(text: str) -> Any:
    """``'int8-dynamic'`` or ``'int8-dynamic:per_channel=false,min_agreement=0.95'``."""
    method, _, options = text.partition(":")
    fields: dict[str, Any] = {"method": method.strip()}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SmallfitError(f"step {text!r}: options look like key=value, got {item!r}")
        lowered = value.strip().lower()
        fields[key.strip()] = {"true": True, "false": False}.get(lowered, value.strip())
    try:
        return _STEP.validate_python(fields)
    except ValidationError as exc:
        known = "onnx, int8-dynamic"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'method'}: {e['msg']}" for e in exc.errors()
        )
        raise SmallfitError(f"step {text!r}: {problems} (known methods: {known})") from exc


def compress(
    model_dir: str | Path,
    steps: list[Any],
    *,
    out_dir: str | Path,
    check_texts: list[str],
    name: str | None = None,
) -> BaseClassifier:
    """Apply ``steps`` to the model in ``model_dir``; the result is saved in ``out_dir``.

    Every step is checked against the model it will meet before anything runs, so an
    inapplicable step (int8 on an already int8 model, ONNX export of a linear model, ...) fails
    at once. ``check_texts`` are the user's texts the steps verify themselves on.
    """
    if not steps:
        raise SmallfitError("no compression steps given")
    if not check_texts:
        raise SmallfitError("compression needs some of your texts to check each step against")
    manifest = read_manifest(model_dir)
    for i, step in enumerate(steps, start=1):
        try:
            manifest = PRECONDITIONS.handler(step)(step, manifest)
        except SmallfitError as exc:
            raise SmallfitError(f"step {i} ({step.method}): {exc}") from None

    out = Path(out_dir)
    lineage_steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smallfit-compress-") as tmp:
        current = Path(model_dir)
        for i, step in enumerate(steps, start=1):
            target = Path(tmp) / f"step{i}"
            started = time.monotonic()
            metrics = HANDLERS.handler(step)(step, current, target, check_texts)
            seconds = round(time.monotonic() - started, 2)
            lineage_steps.append({**step.model_dump(), "metrics": metrics, "seconds": seconds})
            current = target
        model = load(current)
        previous = model.lineage.get("compression", [])
        model.lineage["compression"] = [*previous, *lineage_steps]
        model.lineage.setdefault("compressed_from", str(Path(model_dir).resolve()))
        if name:
            model.name = name
        if out.exists():
            shutil.rmtree(out)
        model.save(out)
    return load(out)


# Built-in steps register themselves on import.
from smallfit.compress import onnx_steps as _onnx_steps  # noqa: E402, F401
