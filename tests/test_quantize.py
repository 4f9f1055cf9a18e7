"""ONNX Runtime int8 on a real MiniLM classifier: static (calibrated) int8, refusal of
inapplicable steps before any work, and the float fallback shared by both int8 steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from smallfit.compress import (
    OnnxExport,
    OrtDynamicInt8,
    OrtStaticInt8,
    compress,
    parse_step,
)
from smallfit.data import read_split
from smallfit.errors import SmallfitError
from smallfit.models import load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(snips_texts: list[str]) -> list[str]:
    return snips_texts


@pytest.fixture(scope="module")
def held_out(snips_slice: Path) -> list[str]:
    return read_split(snips_slice / "test.jsonl").texts


@pytest.fixture(scope="module")
def trained_dir(snips_minilm: Path) -> Path:
    return snips_minilm


@pytest.fixture(scope="module")
def onnx_dir(trained_dir: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("c") / "float"  # plain: static int8 refuses a fused graph
    compress(trained_dir, [OnnxExport(fuse=False)], out_dir=out, check_texts=texts)
    return out


@pytest.fixture(scope="module")
def static_dir(onnx_dir: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("c") / "static"
    compress(onnx_dir, [OrtStaticInt8()], out_dir=out, check_texts=texts)
    return out


@pytest.fixture(scope="module")
def borderline(onnx_dir: Path, texts: list[str], held_out: list[str]) -> list[str]:
    """All texts, those the float model is least sure of (smallest top-1 - top-2 logit
    margin) first: where int8 flips predictions, so full quantization agrees < 100%."""
    return _least_sure_first(onnx_dir, texts + held_out)


@pytest.fixture(scope="module")
def two_intents(onnx_dir: Path, texts: list[str], held_out: list[str]) -> list[str]:
    """Two-intent mixes of the texts ("a and b"), least sure first: where even dynamic int8,
    whose activation scale is each batch's own, flips some predictions."""
    pool = texts + held_out
    mixes = [f"{a} and {b}" for a, b in zip(pool[::2], pool[1::2][::-1], strict=False)]
    return _least_sure_first(onnx_dir, mixes)


def _least_sure_first(onnx_dir: Path, pool: list[str]) -> list[str]:
    logits = np.sort(load(onnx_dir).logits(pool), axis=1)
    return [pool[i] for i in np.argsort(logits[:, -1] - logits[:, -2], kind="stable")]


def _argmax_agreement(a: Path, b: Path, texts: list[str]) -> float:
    return float((load(a).logits(texts).argmax(1) == load(b).logits(texts).argmax(1)).mean())


def test_static_int8_is_calibrated_smaller_and_agrees(static_dir, onnx_dir, held_out) -> None:
    static = load(static_dir)
    assert static.quantization == "int8-static (per-channel, minmax)"
    assert [s["method"] for s in static.lineage["compression"]] == ["onnx", "int8-static"]
    metrics = static.lineage["compression"][-1]["metrics"]
    assert metrics["calibration_texts"] == 256 and metrics["check_texts"] == 256
    assert metrics["float_nodes"] == [] and metrics["quantized_nodes"] == 37
    size = (static_dir / "model.onnx").stat().st_size
    assert size < 0.35 * (onnx_dir / "model.onnx").stat().st_size
    # Texts the calibration never saw.
    assert _argmax_agreement(static_dir, onnx_dir, held_out) >= 0.9
    np.testing.assert_allclose(static.predict_proba(held_out[:5]).sum(1), 1.0, atol=1e-5)


def test_histogram_calibration_takes_texts_of_mixed_lengths(onnx_dir, texts, tmp_path) -> None:
    # Percentile stacks all calibration batches into one array: they must share one shape.
    step = OrtStaticInt8(calibrate_method="percentile", calibration_texts=40, min_agreement=0.9)
    model = compress(onnx_dir, [step], out_dir=tmp_path / "p", check_texts=texts)
    assert model.quantization == "int8-static (per-channel, percentile)"
    assert model.lineage["compression"][-1]["metrics"]["calibration_texts"] == 40


def test_static_int8_is_refused_before_any_work(static_dir, trained_dir, texts, tmp_path) -> None:
    cases = [
        (static_dir, "already quantized \\(int8-static \\(per-channel, minmax\\)\\)"),
        (trained_dir, "int8-static quantizes ONNX models; this one is 'transformer'"),
    ]
    for source, message in cases:
        out = tmp_path / "never"
        with pytest.raises(SmallfitError, match=message):
            compress(source, [OrtStaticInt8()], out_dir=out, check_texts=texts)
        assert not out.exists()


def test_fallback_leaves_the_most_sensitive_matmuls_in_float(onnx_dir, borderline, tmp_path):
    step = OrtStaticInt8(min_agreement=1.0)
    model = compress(onnx_dir, [step], out_dir=tmp_path / "f", check_texts=borderline)
    metrics = model.lineage["compression"][-1]["metrics"]
    tried = [t["argmax_agreement"] for t in metrics["tried"]]
    assert tried[0] < 1.0, "full quantization agrees everywhere: the fallback was not exercised"
    assert metrics["argmax_agreement"] == 1.0 == tried[-1]
    float_nodes = metrics["float_nodes"]
    assert 0 < len(float_nodes) <= 37 // 2
    assert metrics["quantized_nodes"] == 37 - len(float_nodes)
    assert model.quantization.endswith(f", {len(float_nodes)} of 37 matmuls in float)")
    assert _argmax_agreement(tmp_path / "f", onnx_dir, borderline[:256]) == 1.0
    # In the saved graph, exactly those matmuls read a float weight (the rest a dequantized one).
    graph = onnx.load(str(tmp_path / "f" / "model.onnx")).graph
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    in_float = {n.name for n in weighted if n.input[1] in weights}
    dequantized = [n for n in weighted if produced_by.get(n.input[1]) == "DequantizeLinear"]
    assert in_float == set(float_nodes)
    assert len(dequantized) == 37 - len(float_nodes)


def test_low_agreement_without_fallback_fails_and_saves_nothing(onnx_dir, two_intents, tmp_path):
    # Per-tensor dynamic int8 flips the least certain of these texts (a check of the shared
    # path through the dynamic step too).
    step = OrtDynamicInt8(per_channel=False, min_agreement=1.0, fallback=False)
    out = tmp_path / "never"
    with pytest.raises(
        SmallfitError, match=r"int8-dynamic agrees .* on \d+\.\d% of \d+ .*fallback is off"
    ):
        compress(onnx_dir, [step], out_dir=out, check_texts=two_intents)
    assert not out.exists()


def test_static_step_specs_parse() -> None:
    assert parse_step("int8-static:calibrate_method=percentile,calibration_texts=64") == (
        OrtStaticInt8(calibrate_method="percentile", calibration_texts=64)
    )
    with pytest.raises(SmallfitError, match="calibrate_method"):
        parse_step("int8-static:calibrate_method=mse")


def test_a_failed_step_never_looks_built_in_the_cache(onnx_dir, two_intents, tmp_path) -> None:
    step = OrtDynamicInt8(per_channel=False, min_agreement=1.0, fallback=False)
    cache = tmp_path / "cache"
    with pytest.raises(SmallfitError, match="fallback is off"):
        compress(
            onnx_dir, [step], out_dir=tmp_path / "never", check_texts=two_intents,
            cache=(cache, "source-key"),
        )  # fmt: skip
    assert not list(cache.glob("*/smallfit.json"))
    # A second try runs the step again (and fails again) instead of reusing a half-made model.
    with pytest.raises(SmallfitError, match="fallback is off"):
        compress(
            onnx_dir, [step], out_dir=tmp_path / "never", check_texts=two_intents,
            cache=(cache, "source-key"),
        )  # fmt: skip
