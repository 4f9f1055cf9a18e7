"""Layer norms spelled out in elementwise operators give the kernels' answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HIDDEN = 48


def _graph(path: Path, kind: str, opset: int, dtype: type = np.float32) -> None:
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(1, 0.2, HIDDEN).astype(dtype), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.2, HIDDEN).astype(dtype), "beta"),
        numpy_helper.from_array(rng.normal(0, 0.2, HIDDEN).astype(dtype), "bias"),
    ]
    if kind == "plain":
        nodes = [
            helper.make_node("Add", ["x", "y"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["out"], epsilon=1e-5),
        ]
    else:  # ONNX Runtime's fused form, with its residual-sum output read downstream, and
        # (as ONNX Runtime writes it when it fuses) no epsilon: its schema's default, 1e-12
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "y", "gamma", "beta", "bias"],
                ["normed", "", "", "summed"],
                domain="com.microsoft",
            ),
            helper.make_node("Add", ["normed", "summed"], ["out"]),
        ]
    shape = ["batch", "seq", HIDDEN]
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info(n, element, shape) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", element, None)],
        inits,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))


def _run(path: Path, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, set[str]]:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    return session.run(None, feed)[0], ops


@pytest.mark.parametrize(("kind", "opset"), [("plain", 17), ("plain", 18), ("skip", 18)])
def test_spelled_out_layer_norms_match_the_kernels_and_stay_spelled_out(
    tmp_path: Path, kind: str, opset: int
) -> None:
    from smallfit.compress.onnx_layernorm import decompose_layer_norms

    rng = np.random.default_rng(1)
    feed = {n: rng.normal(0, 3, (2, 7, HIDDEN)).astype(np.float32) for n in ("x", "y")}
    feed["x"][0, 0], feed["y"][0, 0] = rng.normal(0, 1e-4, HIDDEN), 0  # epsilon matters here
    graph = tmp_path / "g.onnx"
    _graph(graph, kind, opset)
    before, _ = _run(graph, feed)
    assert decompose_layer_norms(graph) == 1
    after, ops = _run(graph, feed)
    np.testing.assert_allclose(after, before, atol=2e-5)
    # ONNX Runtime's own optimizer (every level) did not fold them back into its slow kernel
    assert not {"LayerNormalization", "SkipLayerNormalization"} & ops
    assert decompose_layer_norms(graph) == 0  # nothing left to rewrite


def test_layer_norms_in_other_precisions_keep_their_kernel(tmp_path: Path) -> None:
    from smallfit.compress.onnx_layernorm import decompose_layer_norms

    graph = tmp_path / "half.onnx"
    _graph(graph, "plain", 18, dtype=np.float16)
    assert decompose_layer_norms(graph) == 0
    feed = {n: np.ones((1, 3, HIDDEN), np.float16) for n in ("x", "y")}
    assert _run(graph, feed)[0].dtype == np.float16  # still a graph ONNX Runtime runs


def _embedding_graph(segments_from_text: bool) -> object:
    """input_ids -> EmbedLayerNormalization, its token types traced the exporter's way (from
    the input's shape) or, wrongly for zeroing, from the text itself."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    tables = {"word": (30, 8), "pos": (16, 8), "seg": (2, 8)}
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, s).astype(np.float32), n)
        for n, s in tables.items()
    ]
    inits += [
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    if segments_from_text:
        traced = [helper.make_node("Min", ["input_ids", "one"], ["seg64"])]
    else:
        traced = [
            helper.make_node("Shape", ["input_ids"], ["shape"]),
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["zeros64"],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [0]),
            ),
            helper.make_node("Mul", ["zeros64", "one"], ["seg64"]),
        ]
    nodes = [
        *traced,
        helper.make_node("Cast", ["seg64"], ["seg32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node(
            "EmbedLayerNormalization",
            ["ids32", "seg32", "word", "pos", "seg", "gamma", "beta"],
            ["out", "mask_index"],
            domain="com.microsoft",
            epsilon=1e-12,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "embed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    imports = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports)


def test_token_types_traced_from_shapes_become_two_operators(tmp_path: Path) -> None:
    import onnx

    from smallfit.compress.onnx_fusion import ZEROS, zero_segments

    feed = {"input_ids": np.array([[3, 7, 0, 29], [1, 2, 3, 4]], np.int64)}
    model = _embedding_graph(segments_from_text=False)
    onnx.save(model, str(tmp_path / "before.onnx"))
    before, _ = _run(tmp_path / "before.onnx", feed)
    assert zero_segments(model) == 4  # Shape, ConstantOfShape, Mul and Cast, for two new ones
    assert zero_segments(model) == 0  # done once
    assert "one" not in {i.name for i in model.graph.initializer}  # its constant went too
    onnx.save(model, str(tmp_path / "after.onnx"))
    after, _ = _run(tmp_path / "after.onnx", feed)
    np.testing.assert_array_equal(after, before)
    assert [n.input[1] for n in model.graph.node if n.op_type.endswith("Normalization")] == [ZEROS]
    # token types that depend on the text are not the exporter's zeros: left alone
    assert zero_segments(_embedding_graph(segments_from_text=True)) == 0
