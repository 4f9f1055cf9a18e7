"""The roofline: FLOPs per query from a manifest's architecture, this machine's GEMM peaks, and
the share of peak a candidate's batch-1 latency achieves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from smallfit import zoo
from smallfit.config import EvalConfig
from smallfit.data import Split
from smallfit.evaluate.candidate import evaluate_candidate
from smallfit.evaluate.roofline import (
    flops_per_query,
    mean_query_tokens,
    peak_rates,
    precision_of,
    roofline,
)

TINY = {
    "model_type": "bert",
    "layers": 2,
    "hidden": 8,
    "head_dim": 4,
    "attention": [8, 4],  # layer 1 lost one of its two heads
    "ffn": [16, 8],
    "vocab": 100,
    "num_labels": 3,
}
PEAKS = {
    "threads": 1,
    "gflops": {"fp32": 100.0, "bf16": 200.0, "int8": 400.0},
    "source": {"fp32": "a", "bf16": "b", "int8": "c"},
}
TEXTS = ["I lost my card", "hi", "why was I charged a fee for withdrawing cash abroad last week"]


def test_flops_per_query_by_hand() -> None:
    # T = 5, H = 8. Layer 0 (A 8, F 16): QKV 3*2*5*8*8 = 1920, scores + weighted sum
    # 2*2*25*8 = 800, output 2*5*8*8 = 640, FFN 2*2*5*8*16 = 2560 -> 5920.
    # Layer 1 (A 4, F 8): 960 + 400 + 320 + 1280 = 2960. Head 2*8*3 = 48.
    assert flops_per_query(TINY, 5) == 5920 + 2960 + 48
    assert flops_per_query(None, 5) is None
    with pytest.raises(ValueError, match="2 layers but 1 attention"):
        flops_per_query({**TINY, "attention": [8]}, 5)


def test_pruned_architectures_cost_less() -> None:
    full = {**TINY, "attention": [8, 8], "ffn": [16, 16]}
    heads = {**full, "attention": [8, 4]}
    neurons = {**full, "ffn": [16, 8]}
    dropped = {**full, "layers": 1, "attention": [8], "ffn": [16]}
    base = flops_per_query(full, 32)
    assert base is not None
    for pruned in (heads, neurons, dropped):
        flops = flops_per_query(pruned, 32)
        assert flops is not None and flops < base


def test_attention_grows_quadratically_in_tokens() -> None:
    no_ffn_no_proj = {**TINY, "layers": 1, "attention": [8], "ffn": [0], "hidden": 0}
    # with H = 0 only the T^2 terms remain: 4*T^2*A
    assert flops_per_query(no_ffn_no_proj, 10) == 4 * 100 * 8
    assert flops_per_query(no_ffn_no_proj, 20) == 4 * flops_per_query(no_ffn_no_proj, 10)
    # in a full model the second difference is exactly the quadratic term, 2 * 4*A per layer
    f = [flops_per_query(TINY, t) for t in (10, 11, 12)]
    assert f[2] - 2 * f[1] + f[0] == pytest.approx(2 * 4 * (8 + 4))


def test_roofline_share_is_achieved_over_peak() -> None:
    flops = flops_per_query(TINY, 12.5)
    assert flops is not None
    r = roofline(TINY, 12.5, p50_ms=0.002, precision="int8", peaks=PEAKS)
    assert r is not None
    assert r["flops_per_query"] == flops
    assert r["achieved_gflops"] == pytest.approx(flops / 2e-6 / 1e9)
    assert r["peak_gflops"] == 400.0 and r["peak_source"] == "c" and r["threads"] == 1
    assert r["share_of_peak"] == pytest.approx(r["achieved_gflops"] / 400.0)
    assert roofline(None, 12.5, p50_ms=1.0, precision="fp32", peaks=PEAKS) is None
    missing = roofline(TINY, 12.5, p50_ms=1.0, precision="bf16", peaks={"gflops": {}})
    assert missing is not None and missing["share_of_peak"] is None
    with pytest.raises(ValueError, match="fp16"):
        roofline(TINY, 12.5, p50_ms=1.0, precision="fp16", peaks=PEAKS)


def test_precision_of_manifests_and_results() -> None:
    assert precision_of({"kind": "transformer"}) == "fp32"
    assert precision_of({"kind": "onnx", "quantization": None}) == "fp32"
    assert precision_of({"kind": "onnx", "quantization": "int8-dynamic (per-channel)"}) == "int8"
    assert precision_of({"kind": "transformer", "autocast_bf16": True}) == "bf16"
    assert precision_of({"roofline": {"precision": "int8"}}) == "int8"
    assert precision_of({"roofline": None}) == "fp32"


def test_mean_query_tokens_torch_and_tokenizers_agree() -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    base = zoo.resolve("minilm-l6")
    hf = AutoTokenizer.from_pretrained(str(base))
    singles = [len(hf(t, truncation=True, max_length=8)["input_ids"]) for t in TEXTS]
    assert singles[1] == 3  # [CLS] hi [SEP]
    torch_like = SimpleNamespace(
        tokenize=lambda texts: hf(
            list(texts), padding=True, truncation=True, max_length=8, return_tensors="np"
        )
    )
    fast = Tokenizer.from_file(str(base / "tokenizer.json"))
    fast.enable_padding(pad_id=0, pad_token="[PAD]")
    fast.enable_truncation(max_length=8)
    onnx_like = SimpleNamespace(tokenizer=fast)
    from smallfit.models.base import BaseClassifier
    from smallfit.models.onnx import OnnxClassifier
    from smallfit.models.transformer import TorchClassifier

    # each backend's own count_tokens, on its own kind of tokenizer
    torch_counts = TorchClassifier.count_tokens(torch_like, TEXTS)  # type: ignore[arg-type]
    onnx_counts = OnnxClassifier.count_tokens(onnx_like, TEXTS)  # type: ignore[arg-type]
    assert list(torch_counts) == list(onnx_counts) == singles
    assert BaseClassifier.count_tokens(SimpleNamespace(), TEXTS) is None  # type: ignore[arg-type]
    counting = SimpleNamespace(count_tokens=lambda texts: np.array([len(t) for t in texts]))
    assert mean_query_tokens(counting, TEXTS) == pytest.approx(np.mean([len(t) for t in TEXTS]))
    assert mean_query_tokens(SimpleNamespace(count_tokens=lambda _: None), TEXTS) is None
    assert mean_query_tokens(counting, []) is None


@pytest.fixture(scope="module")
def tiny_transformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT (random weights) with MiniLM's tokenizer, saved as a model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from smallfit.models.transformer import PooledClassifier, TransformerClassifier

    torch.manual_seed(0)
    base = zoo.resolve("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    encoder = BertModel(config, add_pooling_layer=False)
    model = TransformerClassifier(
        PooledClassifier(encoder, 2), tokenizer, labels=["a", "b"], name="tiny", max_length=16
    )
    return model.save(tmp_path_factory.mktemp("tiny") / "tiny")


def test_evaluate_candidate_adds_a_roofline(tiny_transformer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    test = Split(texts=TEXTS, labels=["a", "b", "a"], source="inline")
    # one throughput batch: it runs on every core, slow while the machine is shared
    config = EvalConfig(
        isolate=False,
        threads=[1],
        latency_queries=4,
        warmup=1,
        throughput_batch=2,
        throughput_batches=1,
    )
    result = evaluate_candidate(
        tiny_transformer_dir, test=test, teacher_test_probs=None, config=config, peaks=PEAKS
    ).result.dump()
    r = result["roofline"]
    manifest = json.loads((tiny_transformer_dir / "smallfit.json").read_text("utf-8"))
    assert manifest["architecture"]["attention"] == [32, 32]
    hf = AutoTokenizer.from_pretrained(str(tiny_transformer_dir))
    sent = [TEXTS[i % 3] for i in range(4)]  # what the latency loop sends
    tokens = sum(len(hf(t, truncation=True, max_length=16)["input_ids"]) for t in sent) / 4
    assert r["tokens_per_query"] == pytest.approx(tokens)
    assert r["flops_per_query"] == flops_per_query(manifest["architecture"], tokens)
    assert r["p50_ms"] == result["speed"]["threads"]["1"]["p50_ms"]
    assert r["precision"] == "fp32" and r["peak_gflops"] == 100.0
    assert r["share_of_peak"] == pytest.approx(r["achieved_gflops"] / 100.0)


def check_peaks(peaks: dict[str, Any], threads: int) -> None:
    assert peaks["threads"] == threads
    assert set(peaks["gflops"]) == {"fp32", "bf16", "int8"}
    assert all(rate > 0 for rate in peaks["gflops"].values())
    for precision, rate in peaks["gflops"].items():
        rows = [s for s in peaks["shapes"] if s["precision"] == precision]
        assert rows and max(s["gflops"] for s in rows) == rate
    assert {(s["m"], s["k"], s["n"]) for s in peaks["shapes"]} == {(16, 64, 64), (32, 128, 128)}


def test_peak_rates_measure_every_precision_and_cache(tmp_path: Path) -> None:
    cache = tmp_path / "peaks.json"
    shapes = [(16, 64, 64), (32, 128, 128)]
    peaks = peak_rates(1, cache_file=cache, shapes=shapes, seconds_per_shape=0.005)
    check_peaks(peaks, 1)
    stored = json.loads(cache.read_text("utf-8"))
    assert stored["threads"]["1"] == peaks
    # another process finds the file: rebuild from it without measuring
    from smallfit.evaluate import roofline as module

    module._MEMO.clear()
    again = peak_rates(1, cache_file=cache, shapes=shapes, seconds_per_shape=0.005)
    assert again == peaks
    stored["machine"]["cpu_model"] = "another machine"
    cache.write_text(json.dumps(stored), "utf-8")
    module._MEMO.clear()
    fresh = peak_rates(1, cache_file=cache, shapes=shapes, seconds_per_shape=0.005)
    check_peaks(fresh, 1)
    assert json.loads(cache.read_text("utf-8"))["machine"] == peaks["machine"]


@pytest.mark.slow
def test_peak_rates_default_shapes() -> None:
    peaks = peak_rates(1)
    assert all(rate > 0 for rate in peaks["gflops"].values())
    assert len({(s["m"], s["k"], s["n"]) for s in peaks["shapes"]}) == 9
