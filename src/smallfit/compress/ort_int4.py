"""4-bit weight-only quantization with ONNX Runtime's MatMulNBits (and GatherBlockQuantized
for the embedding table): the smallest files, with a kernel that runs int8 math on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.compress.base import StepContext, quiet, register_step
from smallfit.compress.ort_quantize import copy_beside_graph, quantizable, refuse_fused
from smallfit.compress.steps import OrtInt4Weight
from smallfit.errors import SmallfitError
from smallfit.models.base import load_as
from smallfit.models.onnx import ONNX_FILE, OnnxClassifier


@register_step(OrtInt4Weight, precondition=quantizable)
def _int4(step: OrtInt4Weight, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    refuse_fused(step, model_dir / ONNX_FILE)
    source = load_as(model_dir, OnnxClassifier)
    copy_beside_graph(model_dir, out)
    ops = ("MatMul", "Gather") if step.embeddings else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(
        block_size=step.block_size,
        is_symmetric=True,
        accuracy_level=step.accuracy_level,
        bits=4,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    # The quantizer logs every node it skips, and that it raises the opset to 21 (int4 types).
    with quiet("", "onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer = MatMulNBitsQuantizer(onnx.load(str(model_dir / ONNX_FILE)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out / ONNX_FILE), use_external_data_format=False)
    quantized = load_as(out, OnnxClassifier)
    compute = {4: "int8 compute", 1: "fp32 compute"}.get(step.accuracy_level, "default compute")
    quantized.quantization = f"int4-weight (block {step.block_size}, {compute})"
    quantized.save(out)
    check = ctx.check_texts[:256]
    agreement = float((quantized.logits(check).argmax(1) == source.logits(check).argmax(1)).mean())
    if agreement < step.min_agreement:
        raise SmallfitError(
            f"int4 agrees with the float model on {agreement:.1%} of {len(check)} of your texts "
            f"(min_agreement {step.min_agreement:.0%}); try block_size=32; not saved"
        )
    nodes = quantizer.model.model.graph.node
    return {
        "argmax_agreement": agreement,
        "check_texts": len(check),
        "matmul_nbits_nodes": sum(n.op_type == "MatMulNBits" for n in nodes),
        "embedding_4bit": any(n.op_type == "GatherBlockQuantized" for n in nodes),
    }
