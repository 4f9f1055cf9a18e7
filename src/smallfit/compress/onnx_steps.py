"""ONNX export (dynamo exporter, checked on padded batches) and ONNX Runtime int8."""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.core import HANDLERS, PRECONDITIONS
from smallfit.compress.steps import OnnxExport, OrtDynamicInt8
from smallfit.errors import SmallfitError
from smallfit.models.base import load
from smallfit.models.onnx import ONNX_FILE, OnnxClassifier

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@PRECONDITIONS.register(OnnxExport)
def _onnx_can_apply(step: OnnxExport, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] != "transformer":
        raise SmallfitError(
            f"ONNX export applies to transformer models; this one is '{manifest['kind']}'"
        )
    return {**manifest, "kind": "onnx", "quantization": None}


@PRECONDITIONS.register(OrtDynamicInt8)
def _int8_can_apply(step: OrtDynamicInt8, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] != "onnx":
        raise SmallfitError(
            f"int8-dynamic quantizes ONNX models; this one is '{manifest['kind']}' "
            "(put an 'onnx' step before it)"
        )
    if manifest.get("quantization"):
        raise SmallfitError(f"the model is already quantized ({manifest['quantization']})")
    return {**manifest, "quantization": "int8-dynamic"}


def _logits_graph(module: Any) -> Any:
    """(input_ids, attention_mask) -> logits: the graph that is exported."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids, attention_mask)["logits"]

    return Logits().eval()


@HANDLERS.register(OnnxExport)
def _export(step: OnnxExport, model_dir: Path, out: Path, texts: list[str]) -> dict[str, Any]:
    import torch

    model = load(model_dir)
    graph = _logits_graph(model.module)
    out.mkdir(parents=True)
    sample = model.tokenize(texts[:4] if len(texts) > 1 else texts * 2)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    # The exporter's own warnings and log lines (deprecations, optional torchvision ops) are not
    # actionable for a user; what matters is checked below: parity with PyTorch.
    with torch.inference_mode(), warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (sample["input_ids"], sample["attention_mask"]),
            str(out / ONNX_FILE),
            dynamo=True,
            opset_version=step.opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False,
            verbose=False,
        )
    for file in _TOKENIZER_FILES:
        if (model_dir / file).is_file():
            shutil.copy2(model_dir / file, out / file)
    exported = OnnxClassifier(
        out,
        labels=model.labels,
        name=model.name,
        max_length=model.max_length,
        temperature=model.temperature,
        parameters=model.num_parameters,
        lineage=model.lineage,
    )
    exported.save(out)
    # Parity on padded batches (the known trap of the legacy exporter): the user's texts,
    # length-mixed so that most rows are padded.
    check = texts[:256]
    with torch.inference_mode():
        reference = model.logits(check)
    got = exported.logits(check)
    diff = float(np.abs(got - reference).max())
    if not diff <= step.tolerance:
        raise SmallfitError(
            f"ONNX export differs from PyTorch by {diff:.3g} in logits on padded batches "
            f"(tolerance {step.tolerance:g}); the export is wrong, not saved"
        )
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return {"max_abs_logit_diff": diff, "argmax_agreement": agreement, "check_texts": len(check)}


@HANDLERS.register(OrtDynamicInt8)
def _int8(step: OrtDynamicInt8, model_dir: Path, out: Path, texts: list[str]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = load(model_dir)
    out.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.name != ONNX_FILE:
            shutil.copy2(file, out / file.name)
    with _quiet(""):  # quantize_dynamic logs a pre-processing hint to the root logger
        quantize_dynamic(
            str(model_dir / ONNX_FILE),
            str(out / ONNX_FILE),
            weight_type=QuantType.QInt8,
            per_channel=step.per_channel,
        )
    quantized = load(out)  # the source's manifest, copied above
    granularity = "per-channel" if step.per_channel else "per-tensor"
    quantized.quantization = f"int8-dynamic ({granularity})"
    quantized.save(out)
    check = texts[:256]
    agreement = float((quantized.logits(check).argmax(1) == source.logits(check).argmax(1)).mean())
    if agreement < step.min_agreement:
        raise SmallfitError(
            f"int8 agrees with the float model on {agreement:.1%} of {len(check)} of your texts "
            f"(min_agreement {step.min_agreement:.0%}); not saved"
        )
    return {"argmax_agreement": agreement, "check_texts": len(check)}


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise the named loggers ("" = root) to ERROR for the block."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
