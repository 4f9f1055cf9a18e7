"""A roofline per candidate: how much of this machine's matrix-multiply peak a query uses.

:func:`flops_per_query` counts a transformer classifier's forward FLOPs from the manifest's
``architecture``; :func:`peak_rates` measures what GEMMs at our models' shapes achieve on this CPU
per precision; :func:`roofline` divides FLOPs by the batch-1 p50 latency and compares the rate
with the peak of the candidate's precision. A small share of peak at batch 1 is expected (short
sequences, framework overhead between kernels); the number says how much headroom is left for
batching or a leaner runtime, not whether a model is good.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.evaluate.host import environment
from smallfit.models.base import BaseClassifier, write_json

PRECISIONS = ("fp32", "bf16", "int8")
# (M, K, N): M tokens in flight (one short query, one long query, a batch of queries);
# K = N the widths of our encoders: MiniLM hidden 384 and FFN 1536, mpnet/BERT-base hidden 768.
SHAPES: tuple[tuple[int, int, int], ...] = tuple(
    (m, k, k) for m in (16, 64, 512) for k in (384, 768, 1536)
)
CACHE_FORMAT = 1
_MEMO: dict[tuple[Any, ...], dict[str, Any]] = {}


def flops_per_query(architecture: dict[str, Any] | None, tokens: float) -> float | None:
    """Forward FLOPs (2 per multiply-add) of one query of ``tokens`` tokens, or None when there
    is no ``architecture`` (linear TF-IDF models have none).

    Per layer ``i`` with hidden width ``H``, attention width ``A = attention[i]`` (heads x
    head_dim, smaller after head pruning), FFN width ``F = ffn[i]`` and ``T = tokens``: the Q, K, V
    projections ``3 * 2*T*H*A``, attention scores and the weighted sum of values
    ``2 * 2*T^2*A``, the output projection ``2*T*A*H``, the FFN ``2 * 2*T*H*F``; plus the head
    ``2*H*num_labels`` once per query (on the pooled vector). Embeddings are lookups (0 FLOPs).
    Bias adds, layernorm, softmax, GELU, pooling and normalisation are ignored: they are
    O(T*H) element-wise work, well under 1% of the total at our widths.
    """
    if architecture is None:
        return None
    hidden = float(architecture["hidden"])
    attention, ffn = list(architecture["attention"]), list(architecture["ffn"])
    if len(attention) != len(ffn) or len(attention) != int(architecture["layers"]):
        raise ValueError(
            f"architecture: {architecture['layers']} layers but {len(attention)} attention "
            f"and {len(ffn)} ffn widths"
        )
    t = float(tokens)
    total = 0.0
    for a, f in zip(attention, ffn, strict=True):
        projections = 3 * 2 * t * hidden * a + 2 * t * a * hidden
        mixing = 2 * 2 * t * t * a
        mlp = 2 * 2 * t * hidden * f
        total += projections + mixing + mlp
    return total + 2 * hidden * float(architecture["num_labels"])


def mean_query_tokens(model: BaseClassifier, texts: Sequence[str]) -> float | None:
    """Mean number of real (unpadded, truncated) tokens per text as ``model`` encodes them,
    special tokens included (its ``count_tokens``); None when it has no tokenizer to ask."""
    if not texts:
        return None
    texts = list(texts)
    counts = model.count_tokens(texts)
    return None if counts is None else float(np.mean(counts))


def precision_of(result_or_manifest: dict[str, Any]) -> str:
    """``"int8"``, ``"bf16"`` or ``"fp32"``: the arithmetic a candidate's matrix multiplies run
    in. Reads an explicit ``precision`` (also inside ``roofline``), else a manifest's
    ``quantization`` (``"int8-dynamic (per-channel)"``, ``"int4-weight (block 128, int8
    compute)"`` and the like) or ``autocast_bf16``; PyTorch fp32 and float ONNX models are
    ``"fp32"``."""
    d = result_or_manifest
    for found in (d.get("precision"), (d.get("roofline") or {}).get("precision")):
        if found in PRECISIONS:
            return str(found)
    if "int8" in str(d.get("quantization") or "").lower():
        return "int8"
    if d.get("autocast_bf16"):
        return "bf16"
    return "fp32"


def roofline(
    architecture: dict[str, Any] | None,
    tokens_per_query: float,
    *,
    p50_ms: float,
    precision: str,
    peaks: dict[str, Any],
) -> dict[str, Any] | None:
    """FLOPs per query, the rate a batch-1 query achieves (FLOPs / ``p50_ms``) and its share
    of the measured peak (:func:`peak_rates`) for ``precision``; None without an architecture.

    Returns ``{"flops_per_query", "tokens_per_query", "p50_ms", "achieved_gflops", "precision",
    "peak_gflops", "peak_source", "share_of_peak", "threads"}``; the peak, its source and the share
    are None when ``peaks`` has no rate for ``precision``.
    """
    flops = flops_per_query(architecture, tokens_per_query)
    if flops is None:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    achieved = flops / (float(p50_ms) * 1e-3) / 1e9
    peak = peaks.get("gflops", {}).get(precision)
    return {
        "flops_per_query": flops,
        "tokens_per_query": float(tokens_per_query),
        "p50_ms": float(p50_ms),
        "achieved_gflops": achieved,
        "precision": precision,
        "peak_gflops": peak,
        "peak_source": peaks.get("source", {}).get(precision),
        "share_of_peak": achieved / peak if peak else None,
        "threads": peaks.get("threads"),
    }


def peak_rates(
    threads: int = 1,
    *,
    cache_file: Path | None = None,
    shapes: Sequence[tuple[int, int, int]] = SHAPES,
    seconds_per_shape: float = 0.05,
) -> dict[str, Any]:
    """This machine's achieved GEMM rate per precision with ``threads`` threads.

    Each (M, K, N) of ``shapes`` is timed for every kernel that can run it: fp32 with
    ``torch.matmul`` and ONNX Runtime ``MatMul`` (what float ONNX models run), bf16 with
    ``torch.matmul`` on bfloat16 tensors (AVX512-BF16 or AMX through oneDNN where the CPU has
    them), int8 with ``torch._int_mm`` and ONNX Runtime ``MatMulInteger`` (uint8 x int8, the
    kernel behind our ``int8-dynamic`` models; VNNI or AMX through MLAS). A kernel's rate is
    ``2*M*K*N`` over its fastest call within ``seconds_per_shape`` (at least 3 calls after 2
    warm-up calls); a precision's peak is the best rate over shapes and kernels.

    Returns ``{"threads", "gflops": {precision: float}, "source": {precision: "kernel"},
    "shapes": [{"m", "k", "n", "precision", "kernel", "gflops"}], "seconds", "load_average_1m",
    "machine"}``.
    Results are memoised in this process and, with ``cache_file``, kept in that JSON file keyed
    by thread count (re-measured when the CPU or torch/onnxruntime versions differ).
    """
    machine = _machine()
    wanted = {tuple(s) for s in shapes}
    key = (threads, tuple(sorted(wanted)), seconds_per_shape, json.dumps(machine, sort_keys=True))
    cached = _read_cache(cache_file, machine)
    result = _MEMO.get(key)
    if result is None:
        hit = cached.get(str(threads))
        if isinstance(hit, dict) and _shapes_of(hit) == wanted:
            result = hit
    if result is None:
        result = _measure(threads, shapes, seconds_per_shape)
        result["machine"] = machine
    _MEMO[key] = result
    if cache_file is not None and cached.get(str(threads)) != result:
        cached[str(threads)] = result
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, {"format": CACHE_FORMAT, "machine": machine, "threads": cached})
    return result


def _machine() -> dict[str, Any]:
    env = environment()
    return {
        "cpu_model": env["cpu_model"],
        "cpu_flags": env["cpu_flags"],
        "usable_cores": env["usable_cores"],
        "torch": env["packages"]["torch"],
        "onnxruntime": env["packages"]["onnxruntime"],
    }


def _shapes_of(result: dict[str, Any]) -> set[tuple[int, int, int]]:
    return {(s["m"], s["k"], s["n"]) for s in result.get("shapes", [])}


def _read_cache(cache_file: Path | None, machine: dict[str, Any]) -> dict[str, Any]:
    """The cached results by thread count, or {} (no file, unreadable, another machine)."""
    if cache_file is None or not Path(cache_file).is_file():
        return {}
    try:
        data = json.loads(Path(cache_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    if data.get("machine") != machine or not isinstance(data.get("threads"), dict):
        return {}
    return dict(data["threads"])


def _measure(
    threads: int, shapes: Sequence[tuple[int, int, int]], seconds: float
) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        # one kernel at a time over all shapes: only one runtime's thread pool is awake
        for precision, name, make in _kernels(threads):
            for m, k, n in shapes:
                run = make(m, k, n)
                if run is None:
                    continue
                rate = 2.0 * m * k * n / _fastest_ns(run, seconds)
                rows.append(
                    {"m": m, "k": k, "n": n, "precision": precision, "kernel": name, "gflops": rate}
                )
    finally:
        torch.set_num_threads(before)
    gflops: dict[str, float] = {}
    source: dict[str, str] = {}
    for row in rows:
        if row["gflops"] > gflops.get(row["precision"], 0.0):
            gflops[row["precision"]] = row["gflops"]
            source[row["precision"]] = f"{row['kernel']} {row['m']}x{row['k']}x{row['n']}"
    return {
        "threads": threads,
        "gflops": gflops,
        "source": source,
        "shapes": rows,
        "seconds": time.perf_counter() - started,
        # other work on the machine lowers the rates (a thread pool waits for its slowest thread)
        "load_average_1m": load,
    }


def _fastest_ns(run: Callable[[], Any], seconds: float) -> float:
    """The fastest of at least 3 timed calls (after 2 warm-up calls) within ``seconds``."""
    run()
    run()
    best = float("inf")
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    calls = 0
    while calls < 3 or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        run()
        best = min(best, time.perf_counter_ns() - start)
        calls += 1
    return max(best, 1.0)


Kernel = tuple[str, str, Callable[[int, int, int], Callable[[], Any] | None]]


def _kernels(threads: int) -> Iterator[Kernel]:
    """(precision, name, factory): a factory returns a no-argument call computing one M x K x N
    product on fresh random operands, or None where this build cannot run it. A generator, so
    that each kernel's ONNX Runtime sessions (and their threads) are gone before the next."""
    import torch

    generator = torch.Generator().manual_seed(0)

    def torch_float(dtype: torch.dtype) -> Callable[[int, int, int], Callable[[], Any]]:
        def make(m: int, k: int, n: int) -> Callable[[], Any]:
            a = torch.randn(m, k, generator=generator).to(dtype)
            b = torch.randn(k, n, generator=generator).to(dtype)
            return lambda: torch.matmul(a, b)

        return make

    def torch_int8(m: int, k: int, n: int) -> Callable[[], Any] | None:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)
        try:
            torch._int_mm(a, b)
        except (RuntimeError, NotImplementedError, AttributeError):
            return None  # not in this build, or a shape it refuses
        return lambda: torch._int_mm(a, b)

    def ort(op: str) -> Callable[[int, int, int], Callable[[], Any]]:
        sessions: dict[tuple[int, int], Any] = {}

        def make(m: int, k: int, n: int) -> Callable[[], Any]:
            if (k, n) not in sessions:
                sessions[k, n] = _ort_session(op, k, n, threads)
            session = sessions[k, n]
            rng = np.random.default_rng(m)
            x: np.ndarray
            if op == "MatMulInteger":
                x = rng.integers(0, 256, (m, k), dtype=np.uint8)
            else:
                x = rng.standard_normal((m, k), dtype=np.float32)
            return lambda: session.run(None, {"A": x})

        return make

    yield "fp32", "torch.matmul", torch_float(torch.float32)
    yield "bf16", "torch.matmul", torch_float(torch.bfloat16)
    yield "int8", "torch._int_mm", torch_int8
    yield "fp32", "onnxruntime MatMul", ort("MatMul")
    yield "int8", "onnxruntime MatMulInteger u8s8", ort("MatMulInteger")


def _ort_session(op: str, k: int, n: int, threads: int) -> Any:
    """An ONNX Runtime session computing ``A @ W`` for a constant K x N ``W``: float32
    ``MatMul`` or ``MatMulInteger`` (uint8 activations x int8 weights -> int32)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from smallfit.models.onnx import session_options

    rng = np.random.default_rng(k * 7919 + n)
    weight: np.ndarray
    if op == "MatMulInteger":
        weight = rng.integers(-128, 128, (k, n), dtype=np.int8)
        types = (TensorProto.UINT8, TensorProto.INT32)
    else:
        weight = rng.standard_normal((k, n), dtype=np.float32)
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "W"], ["Y"])],
        f"peak_{op}",
        [helper.make_tensor_value_info("A", types[0], ["M", k])],
        [helper.make_tensor_value_info("Y", types[1], ["M", n])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = session_options(threads)  # the candidates' own kernel choice
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
