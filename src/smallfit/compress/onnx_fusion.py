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


ZEROS = "smallfit_segments/zeros"


def _reads_no_input(graph: Any, name: str) -> bool:
    """Whether the tensor ``name`` is computed from the graph's inputs only through their
    shapes (``Shape``), from constants otherwise: the same for every text."""
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    todo, seen = [name], set()
    while todo:
        tensor = todo.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in inputs:
            return False
        node = producer.get(tensor)
        if node is not None and node.op_type != "Shape":
            todo.extend(node.input)
    return True


def zero_segments(model: Any) -> int:
    """Feed ``EmbedLayerNormalization`` its segment ids (token types) as zeros of the input's
    shape (two operators) in place of what the exporter traced: the encoder's buffer of zeros,
    sliced and expanded to the batch in 15 small shape operators, 12-26 us of a 750 us query.
    Only where those ids cannot depend on a text (computed from constants and the inputs'
    shapes alone), and the graph has no control flow; the nodes nothing reads any more are
    dropped, with their constants. How many nodes went."""
    from onnx import AttributeProto, TensorProto, helper

    graph = model.graph
    kinds = ("EmbedLayerNormalization", "QEmbedLayerNormalization")
    embed = [n for n in graph.node if n.op_type in kinds]
    inputs = {i.name for i in graph.input}
    subgraphs = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    if len(embed) != 1 or "input_ids" not in inputs or len(embed[0].input) < 2:
        return 0
    segment = embed[0].input[1]
    if not segment or segment == ZEROS or not _reads_no_input(graph, segment):
        return 0
    if any(a.type in subgraphs for n in graph.node for a in n.attribute):
        return 0  # names read inside a branch or loop body: no pruning here
    zero = helper.make_tensor("zero", TensorProto.INT32, [1], [0])
    shape = helper.make_node("Shape", ["input_ids"], ["smallfit_segments/shape"], name="seg_shape")
    zeros = helper.make_node(
        "ConstantOfShape", ["smallfit_segments/shape"], [ZEROS], name="seg_zeros", value=zero
    )
    embed[0].input[1] = ZEROS
    old = list(graph.node)
    needed = {o.name for o in graph.output}
    live: list[Any] = []
    for node in reversed([shape, zeros, *old]):  # topologically sorted: walk it backwards
        if any(o in needed for o in node.output):
            live.append(node)
            needed |= set(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    kept = [i for i in graph.initializer if i.name in needed or i.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    produced = needed | {o for n in live for o in n.output}
    info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(info)
    return len(old) - (len(live) - 2)


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
