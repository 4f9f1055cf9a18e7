"""Quantizing a GGUF generator with llama.cpp's own quantizer (``gguf-q8_0``,
``gguf-q4_k_m``), from its f16 file; the quantized model's answers on the check texts are
compared with the f16 model's and reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.compress.base import StepContext, register_step
from smallfit.compress.steps import GgufQ4KM, GgufQ8
from smallfit.errors import SmallfitError
from smallfit.models.gguf_extractor import GGUF_FILE, KIND, GgufExtractor
from smallfit.models.llama_tools import quantize_gguf


def _from_f16(step: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    kind = manifest.get("kind")
    if kind != KIND:
        raise SmallfitError(
            f"{step.method} quantizes a GGUF model (a generator student's), not a {kind} model"
        )
    if manifest.get("gguf_type") != "f16":
        raise SmallfitError(
            f"the model is already {manifest.get('gguf_type')}: quantize from the f16 model"
        )
    return {**manifest, "gguf_type": step.gguf_type}


def quantize_generator(step: Any, src: Path, out: Path, context: StepContext) -> dict[str, Any]:
    """``src``'s GGUF file quantized to ``step.gguf_type`` in ``out``, with how many of the
    check texts get the same answer as before."""
    source = GgufExtractor.load(src)
    out.mkdir(parents=True, exist_ok=True)
    quantize_gguf(src / GGUF_FILE, out / GGUF_FILE, step.gguf_type)
    quantized = GgufExtractor.load(src)  # the same model, pointed at the quantized file
    quantized.path, quantized.gguf_type = out, step.gguf_type
    quantized.lineage["quantized_from"] = str(src)
    texts = context.check_texts[: step.check_texts]
    try:
        before = [e.values for e in source.extract(texts)]
        after = [e.values for e in quantized.extract(texts)]
    finally:
        source.close()
        quantized.close()
    same = sum(a == b for a, b in zip(before, after, strict=True))
    report = {
        "answer_agreement": same / len(texts) if texts else None,
        "check_texts": len(texts),
        "bytes": (out / GGUF_FILE).stat().st_size,
        "source_bytes": (src / GGUF_FILE).stat().st_size,
    }
    quantized.lineage["quantize"] = report
    quantized.save(out)
    return report


register_step(GgufQ8, precondition=_from_f16)(quantize_generator)
register_step(GgufQ4KM, precondition=_from_f16)(quantize_generator)
