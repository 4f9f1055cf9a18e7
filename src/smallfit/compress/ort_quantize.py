"""ONNX Runtime int8 quantization: dynamic and static, with float fallback for the matrix
multiplications whose quantization hurts agreement with the float model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from smallfit.compress.core import HANDLERS, PRECONDITIONS, StepContext
from smallfit.compress.onnx_steps import quiet
from smallfit.compress.steps import OrtDynamicInt8
from smallfit.errors import SmallfitError
from smallfit.models.base import load
from smallfit.models.onnx import ONNX_FILE


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


@HANDLERS.register(OrtDynamicInt8)
def _int8(step: OrtDynamicInt8, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    texts = ctx.check_texts
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = load(model_dir)
    out.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.name != ONNX_FILE:
            shutil.copy2(file, out / file.name)
    with quiet(""):  # quantize_dynamic logs a pre-processing hint to the root logger
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


