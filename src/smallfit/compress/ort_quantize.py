"""ONNX Runtime int8 quantization: dynamic and static, with float fallback for the matrix
multiplications whose quantization hurts agreement with the float model.

Both steps share one loop (``_quantize_checked``): quantize every weight matrix, measure argmax
agreement with the float model on the user's texts and, below ``min_agreement``, leave the
most sensitive matrices in float (1, 2, 4, ... of them, at most half). A matrix's sensitivity
is how far quantizing it alone moves the predicted distribution (mean KL on 128 texts): a
continuous measure, where agreement on a few hundred texts is too coarse to rank ~40 nodes.
It is measured with the step's own quantizer: static int8 errs mostly through its calibrated
activation ranges (FFN outputs after GELU), which a dynamic probe does not see, and the
calibration cache makes a static probe as cheap as a dynamic one.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smallfit.compress.base import StepContext, quiet, register_step
from smallfit.compress.steps import OrtDynamicInt8, OrtStaticInt8
from smallfit.errors import SmallfitError
from smallfit.models.base import load_as, read_manifest
from smallfit.models.onnx import ONNX_FILE, OnnxClassifier

# (destination file, nodes to quantize (None: all the step quantizes), nodes left in float)
Quantizer = Callable[[Path, list[str] | None, list[str]], None]
CHECK_TEXTS = 256  # agreement with the float model is measured on this many of the user's texts
SENSITIVITY_TEXTS = 128  # each node's sensitivity, on this many
CALIBRATION_BATCH = 16


def quantizable(step: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """ONNX only (the quantizers rewrite an ONNX graph), and never twice: quantizing a
    quantized model would quantize the dequantized weights again and only lose accuracy."""
    if manifest["kind"] != "onnx":
        raise SmallfitError(
            f"{step.method} quantizes ONNX models; this one is '{manifest['kind']}' "
            "(put an 'onnx' step before it)"
        )
    if manifest.get("quantization"):
        raise SmallfitError(f"the model is already quantized ({manifest['quantization']})")
    return {**manifest, "quantization": step.method}


FUSED_OPS = frozenset({"Attention", "EmbedLayerNormalization"})


def refuse_fused(step: Any, onnx_file: Path) -> None:
    """A method that quantizes MatMul nodes would leave a fused graph's attention in float (a
    bigger model for nothing): refused, naming the way out."""
    import onnx

    found = {n.op_type for n in onnx.load(str(onnx_file), load_external_data=False).graph.node}
    if found & FUSED_OPS:
        raise SmallfitError(
            f"{step.method} quantizes MatMul nodes, and this ONNX graph is fused "
            f"({', '.join(sorted(found & FUSED_OPS))}): its attention would stay in float. "
            "Export it with onnx:fuse=false (or put both steps in one compress call, which does)"
        )


def quantizable_dynamic(step: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """:func:`quantizable`, and an ONNX tagger too (dynamic int8 is the one method it takes)."""
    if manifest["kind"] == "tagger-onnx":
        return quantizable(step, {**manifest, "kind": "onnx"}) | {"kind": "tagger-onnx"}
    return quantizable(step, manifest)


@register_step(OrtDynamicInt8, precondition=quantizable_dynamic)
def _int8_dynamic(
    step: OrtDynamicInt8, model_dir: Path, out: Path, ctx: StepContext
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if read_manifest(model_dir)["kind"] == "tagger-onnx":
        from smallfit.compress.tagger_steps import quantize_tagger

        return quantize_tagger(model_dir, out, ctx.check_texts, per_channel=step.per_channel)

    def quantize(dest: Path, only: list[str] | None, exclude: list[str]) -> None:
        quantize_dynamic(
            model_dir / ONNX_FILE,
            dest,
            weight_type=QuantType.QInt8,
            per_channel=step.per_channel,
            nodes_to_quantize=only,
            nodes_to_exclude=exclude,
            # a fused graph's contrib ops (Attention, ...) defeat shape inference: float it is
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    granularity = "per-channel" if step.per_channel else "per-tensor"
    return _quantize_checked(step, model_dir, out, ctx, quantize=quantize, details=[granularity])


@register_step(OrtStaticInt8, precondition=quantizable)
def _int8_static(
    step: OrtStaticInt8, model_dir: Path, out: Path, ctx: StepContext
) -> dict[str, Any]:
    """QDQ with int8 weights and uint8 activations: on the CPU EP (x86, ORT 1.32) int8
    activations ran 4-7x slower (the S8S8 QDQ MatMul is not fused) for the same accuracy.
    The embedding tables (Gather) are quantized too, as the dynamic step does (4x smaller)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Calibrate on texts the agreement check does not use, when there are enough of them:
    # calibrating on the check texts made the check optimistic (98.8% vs 97.9% held out).
    rest = ctx.check_texts[CHECK_TEXTS:]
    texts = (rest if len(rest) >= step.calibration_texts else ctx.check_texts)[
        : step.calibration_texts
    ]
    refuse_fused(step, model_dir / ONNX_FILE)
    reader = _Calibration(load_as(model_dir, OnnxClassifier).tokenizer, texts)
    matmuls, gathers = weight_nodes(model_dir / ONNX_FILE)
    # Calibrate once: every later quantization (per-node sensitivity, exclusions) reads the
    # ranges from this cache instead of running the texts again.
    cache = Path(tempfile.mkdtemp(dir=ctx.work_dir)) / "ranges.json"
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[step.calibrate_method]

    def quantize(dest: Path, only: list[str] | None, exclude: list[str]) -> None:
        # Explicit nodes: products of two activations (attention scores) stay in float.
        nodes = only or [n for n in matmuls + gathers if n not in exclude]
        with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
            quantize_static(
                model_dir / ONNX_FILE,
                dest,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=step.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                nodes_to_quantize=nodes,
                calibrate_method=method,
                calibration_cache_path=cache,
            )

    granularity = "per-channel" if step.per_channel else "per-tensor"
    details = [granularity, step.calibrate_method]
    metrics = _quantize_checked(step, model_dir, out, ctx, quantize=quantize, details=details)
    return {**metrics, "calibration_texts": len(texts)}


def weight_nodes(onnx_file: Path) -> tuple[list[str], list[str]]:
    """(MatMul/Gemm, Gather) nodes that read a constant weight: the ones int8 stores as int8
    and the fallback may leave in float."""
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    constant = {i.name for i in graph.initializer}

    def reads_constant(node: Any, i: int) -> bool:
        return bool(node.name) and len(node.input) > i and node.input[i] in constant

    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and reads_constant(n, 1)]
    gathers = [n for n in graph.node if n.op_type == "Gather" and reads_constant(n, 0)]
    return [n.name for n in matmuls], [n.name for n in gathers]


class _Calibration:
    """The user's texts in their own order (lengths mix, so rows are padded as at inference),
    in batches of 16, all padded to one length: the histogram calibrator (percentile)
    stack every batch into one array. The last batch is filled up from the first texts."""

    def __init__(self, tokenizer: Any, texts: Sequence[str]) -> None:
        n = -(-len(texts) // CALIBRATION_BATCH) * CALIBRATION_BATCH
        encoded = tokenizer.encode_batch([texts[i % len(texts)] for i in range(n)])
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        self._batches = iter(
            {
                "input_ids": ids[i : i + CALIBRATION_BATCH],
                "attention_mask": mask[i : i + CALIBRATION_BATCH],
            }
            for i in range(0, n, CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _quantize_checked(
    step: OrtDynamicInt8 | OrtStaticInt8,
    model_dir: Path,
    out: Path,
    ctx: StepContext,
    *,
    quantize: Quantizer,
    details: list[str],
) -> dict[str, Any]:
    """Quantize, check agreement with the float model, fall back to float where it hurts.

    Below ``step.min_agreement`` it raises a SmallfitError that says what was tried (``out``
    is scratch space of :func:`~smallfit.compress.core.compress`: nothing half-done is kept)."""
    check = ctx.check_texts[:CHECK_TEXTS]
    reference = load_as(model_dir, OnnxClassifier).logits(check)
    nodes = weight_nodes(model_dir / ONNX_FILE)[0]

    def logits(texts: list[str], only: list[str] | None, exclude: list[str]) -> np.ndarray:
        with quiet(""):  # the quantizers log a pre-processing hint to the root logger
            quantize(out / ONNX_FILE, only, exclude)
        return load_as(out, OnnxClassifier).logits(texts)  # the source's manifest, copied above

    def agreement(exclude: list[str]) -> float:
        return float((logits(check, None, exclude).argmax(1) == reference.argmax(1)).mean())

    copy_beside_graph(model_dir, out)
    excluded: list[str] = []
    tried: list[tuple[int, float]] = [(0, agreement(excluded))]
    if tried[-1][1] < step.min_agreement and step.fallback:
        probe = check[:SENSITIVITY_TEXTS]
        bar = tqdm(nodes, desc=f"{step.method}: probing matmuls", disable=not ctx.progress)
        harm = {n: _kl(reference[: len(probe)], logits(probe, [n], [])) for n in bar}
        ranked = sorted(nodes, key=harm.__getitem__, reverse=True)
        limit, size = min(len(nodes), max(1, len(nodes) // 2)), 1
        while tried[-1][1] < step.min_agreement and len(excluded) < limit:
            excluded = ranked[: min(size, limit)]
            tried.append((len(excluded), agreement(excluded)))
            size *= 2
    if tried[-1][1] < step.min_agreement:
        raise SmallfitError(_failure(step, tried, len(check), len(nodes)))
    quantized = load_as(out, OnnxClassifier)
    float_note = [f"{len(excluded)} of {len(nodes)} matmuls in float"] if excluded else []
    quantized.quantization = f"{step.method} ({', '.join(details + float_note)})"
    quantized.save(out)
    return {
        "argmax_agreement": tried[-1][1],
        "check_texts": len(check),
        "float_nodes": excluded,
        "quantized_nodes": len(nodes) - len(excluded),
        "tried": [{"float_nodes": k, "argmax_agreement": a} for k, a in tried],
    }


def copy_beside_graph(model_dir: Path, out: Path) -> None:
    """A new model directory ``out`` holding every file of ``model_dir`` but the ONNX graph
    (manifest, tokenizer), for a quantizer to write its graph beside."""
    out.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.name != ONNX_FILE:
            shutil.copy2(file, out / file.name)


def _kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(float || quantized) of the softmax distributions, per text."""
    p, q = _log_softmax(reference), _log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(1).mean())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def _failure(
    step: OrtDynamicInt8 | OrtStaticInt8, tried: list[tuple[int, float]], texts: int, nodes: int
) -> str:
    agreement = tried[-1][1]
    head = (
        f"{step.method} agrees with the float model on {agreement:.1%} of {texts} of your texts "
        f"(min_agreement {step.min_agreement:.1%})"
    )
    if not step.fallback:
        return f"{head}; fallback is off; not saved"
    attempts = ", ".join(f"{k} -> {a:.1%}" for k, a in tried)
    return (
        f"{head}, even with up to {tried[-1][0]} of its {nodes} matrix multiplications left in "
        f"float, the most sensitive first (matmuls in float -> agreement: {attempts}); not saved"
    )
