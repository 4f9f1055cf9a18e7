"""Layer norms spelled out in elementwise operators give the kernels' answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HIDDEN = 48


def _graph(path: Path, kind: str, opset: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(1, 0.2, HIDDEN).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.2, HIDDEN).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(0, 0.2, HIDDEN).astype(np.float32), "bias"),
    ]
    if kind == "plain":
        nodes = [
            helper.make_node("Add", ["x", "y"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["out"], epsilon=1e-5),
        ]
    else:  # ONNX Runtime's fused form, with its residual-sum output read downstream
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "y", "gamma", "beta", "bias"],
                ["normed", "", "", "summed"],
                domain="com.microsoft",
                epsilon=1e-5,
            ),
            helper.make_node("Add", ["normed", "summed"], ["out"]),
        ]
    shape = ["batch", "seq", HIDDEN]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
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
    graph = tmp_path / "g.onnx"
    _graph(graph, kind, opset)
    before, _ = _run(graph, feed)
    assert decompose_layer_norms(graph) == 1
    after, ops = _run(graph, feed)
    np.testing.assert_allclose(after, before, atol=2e-5)
    # ONNX Runtime's own optimizer (every level) did not fold them back into its slow kernel
    assert not {"LayerNormalization", "SkipLayerNormalization"} & ops
    assert decompose_layer_norms(graph) == 0  # nothing left to rewrite
