"""``onnx:fuse=true``: a graph ONNX Runtime's fused transformer kernels run.

The dynamo exporter's attention (scaled dot-product attention, decomposed) is a pattern ONNX
Runtime's transformer optimizer does not recognise: on it the optimizer fuses only GELU and
LayerNorm. The TorchScript exporter, with the encoder's attention switched to its eager
implementation, gives the classic pattern, which the optimizer turns into ``Attention``,
``SkipLayerNormalization``, ``EmbedLayerNormalization`` and ``BiasGelu`` kernels. The caller
checks the result against PyTorch, as it checks every export.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from smallfit.compress.base import export_graph, quiet
from smallfit.errors import SmallfitError

FUSABLE = {"bert": "bert"}
"""Encoder model type -> the optimizer's model type (BERT's fusions: MiniLM is a BERT)."""


def export_fused(
    encoder: Any, graph: Any, sample: Any, dest: Path, *, opset: int, outputs: list[str]
) -> dict[str, Any]:
    """``graph`` (input_ids, attention_mask -> ``outputs``), whose encoder is ``encoder``,
    exported and fused into ``dest``; the fused operators' counts."""
    config = encoder.config
    kind = FUSABLE.get(config.model_type)
    if kind is None:
        raise SmallfitError(
            f"onnx:fuse=true applies to BERT-family encoders (MiniLM); this one is a "
            f"{config.model_type}: export it without fuse"
        )
    loaded = config._attn_implementation
    encoder.set_attn_implementation("eager")
    try:
        return _fuse(encoder, graph, sample, dest, opset=opset, outputs=outputs, kind=kind)
    finally:
        encoder.set_attn_implementation(loaded)  # a plain export after a refusal gets it back


def _fuse(
    encoder: Any,
    graph: Any,
    sample: Any,
    dest: Path,
    *,
    opset: int,
    outputs: list[str],
    kind: str,
) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    config = encoder.config
    with tempfile.TemporaryDirectory(prefix="smallfit-fuse-") as tmp:
        raw = Path(tmp) / "unfused.onnx"
        export_graph(graph, sample, raw, opset=opset, outputs=outputs, dynamo=False)
        with warnings.catch_warnings(), quiet("onnxruntime", "root"):
            warnings.simplefilter("ignore")
            fused = optimize_model(
                str(raw),
                model_type=kind,
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
            )
        counts = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
        if counts.get("Attention", 0) < config.num_hidden_layers:
            raise SmallfitError(
                f"ONNX Runtime's optimizer fused attention in {counts.get('Attention', 0)} of "
                f"{config.num_hidden_layers} layers (pruned heads?); export without fuse"
            )
        removed = zero_segments(fused.model)
        fused.save_model_to_file(str(dest))
    _loads(dest)
    return {"fused_operators": counts, "segment_ops_removed": removed}


def zero_segments(model: Any) -> int:
    """Feed ``EmbedLayerNormalization`` its segment ids (token types) as zeros of the input's
    shape (two operators) in place of what the exporter traced: the encoder's buffer of zeros,
    sliced and expanded to the batch in 15 small shape operators, about 15 us of a 600 us
    query. Only a graph without a ``token_type_ids`` input, whose segments are all 0; nodes
    nothing reads any more are dropped. How many nodes went."""
    from onnx import TensorProto, helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    kinds = ("EmbedLayerNormalization", "QEmbedLayerNormalization")
    embed = [n for n in graph.node if n.op_type in kinds]
    if "token_type_ids" in inputs or "input_ids" not in inputs or len(embed) != 1:
        return 0
    if len(embed[0].input) < 2 or not embed[0].input[1]:
        return 0
    before = len(graph.node)
    zero = helper.make_tensor("zero", TensorProto.INT32, [1], [0])
    shape = helper.make_node("Shape", ["input_ids"], ["smallfit_segments/shape"])
    segments = helper.make_node(
        "ConstantOfShape", ["smallfit_segments/shape"], ["smallfit_segments/zeros"], value=zero
    )
    embed[0].input[1] = "smallfit_segments/zeros"
    nodes = [shape, segments, *graph.node]
    needed = {o.name for o in graph.output}
    live: list[Any] = []
    for node in reversed(nodes):  # the graph is topologically sorted: walk it backwards
        if any(o in needed for o in node.output):
            live.append(node)
            needed |= set(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    used = needed
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return before - (len(graph.node) - 2)


def _loads(graph: Path) -> None:
    """A fused graph ONNX Runtime will not load (its Attention kernel wants every layer's
    heads the same size: a model with pruned heads has fewer in some layers) is refused."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise SmallfitError(
            f"the fused graph does not load in ONNX Runtime ({str(exc).splitlines()[0][:200]}); "
            "export without fuse"
        ) from None
