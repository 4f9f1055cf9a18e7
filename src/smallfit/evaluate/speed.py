"""Latency, throughput and memory of a saved model directory.

With ``EvalConfig.isolate`` (the default) the measurement runs in a fresh Python process
(:mod:`smallfit.evaluate.probe`), so the peak RSS is that model's alone and thread settings start
clean; otherwise it runs in this process (quick, for tests; peak RSS is then the whole process's).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.evaluate.config import EvalConfig
from smallfit.models.base import BaseClassifier, read_manifest
from smallfit.stats import latency_percentiles

_STDERR_TAIL = 2000


def cpu_threads_all() -> int:
    """How many CPU threads this process may use ("all" in ``EvalConfig.threads``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_counts(config: EvalConfig) -> list[int]:
    """``config.threads`` with "all" resolved, duplicates dropped, order kept."""
    out: list[int] = []
    for t in config.threads:
        n = cpu_threads_all() if t == "all" else int(t)
        if n not in out:
            out.append(n)
    return out


def measure_speed(model_dir: Path, texts: list[str], config: EvalConfig) -> dict[str, Any]:
    """Batch-1 latency per thread setting, batch throughput with all threads, and memory.

    Returns ``{"threads": {"<n>": {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "n",
    "samples_ms"}},
    "throughput_b<B>_per_s": float, "throughput_batch": B, "peak_rss_bytes": int,
    "load_rss_bytes": int, "cpu_threads_all": int, "isolated": bool}`` (B is
    ``config.throughput_batch``, 32 by default).
    """
    model_dir = Path(model_dir)
    read_manifest(model_dir)  # a clear error before anything is spawned
    if not texts:
        raise SmallfitError(f"{model_dir}: no texts to measure speed on")
    if not config.isolate:
        from smallfit.models.loading import load_model

        model = load_model(model_dir)
        return measure_loaded(model, texts, config, load_rss_bytes=current_rss(), isolated=False)
    return _measure_in_subprocess(model_dir, texts, config)


def _measure_in_subprocess(model_dir: Path, texts: list[str], config: EvalConfig) -> dict[str, Any]:
    env = dict(os.environ)
    # thread pools sized before any library loads; the probe narrows them per setting
    most = str(max(thread_counts(config)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = most
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="smallfit-probe-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "smallfit.evaluate.probe",
            str(model_dir),
            "--texts-file",
            str(texts_file),
            "--config-json",
            config.model_dump_json(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = proc.stderr[-_STDERR_TAIL:].strip()
        raise SmallfitError(
            f"{model_dir}: speed probe failed with exit code {proc.returncode}:\n{tail}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise SmallfitError(
            f"{model_dir}: speed probe printed no JSON result; stdout ends with: "
            f"{proc.stdout[-_STDERR_TAIL:]!r}"
        ) from exc
    if not isinstance(result, dict) or "threads" not in result:
        raise SmallfitError(f"{model_dir}: speed probe printed an unexpected result: {result!r}")
    return result


def measure_loaded(
    model: BaseClassifier,
    texts: Sequence[str],
    config: EvalConfig,
    *,
    load_rss_bytes: int,
    isolated: bool,
) -> dict[str, Any]:
    """Measure an already loaded model (the probe's body; see :func:`measure_speed`)."""
    if not texts:
        raise SmallfitError("no texts to measure speed on")
    texts = list(texts)
    counts = thread_counts(config)
    all_threads = cpu_threads_all()
    per_thread: dict[str, dict[str, Any]] = {}
    generation = getattr(model, "generation", None)  # a generative model counts its tokens
    for n in counts:
        with limit_threads(n, model):
            for i in range(config.warmup):
                model.answer([texts[i % len(texts)]])
            if generation is not None:
                generation.reset()
            per_thread[str(n)] = _latency(
                model, texts, config.latency_queries, budget_s=config.probe_budget_s
            )
            if generation is not None and generation.rate() is not None:
                per_thread[str(n)]["tokens_per_s"] = generation.rate()
    with limit_threads(all_threads, model):
        per_s = _throughput(
            model,
            texts,
            config.throughput_batch,
            config.throughput_batches,
            budget_s=config.probe_budget_s,
        )
    return {
        "threads": per_thread,
        f"throughput_b{config.throughput_batch}_per_s": per_s,
        "throughput_batch": config.throughput_batch,
        # ru_maxrss is updated lazily by the kernel and can trail the current RSS a little
        "peak_rss_bytes": max(peak_rss(), current_rss(), int(load_rss_bytes)),
        "load_rss_bytes": int(load_rss_bytes),
        "cpu_threads_all": all_threads,
        "isolated": isolated,
    }


def batched_throughput(speed: dict[str, Any]) -> float | None:
    """Texts per second at batch ``throughput_batch`` from a :func:`measure_speed` result;
    None when it has none (an API model)."""
    value = speed.get(f"throughput_b{speed.get('throughput_batch', 32)}_per_s")
    return None if value is None else float(value)


MIN_QUERIES, MIN_BATCHES = 30, 2
"""What a probe with a time budget measures at least."""


def _latency(
    model: BaseClassifier, texts: list[str], queries: int, *, budget_s: float | None
) -> dict[str, Any]:
    return interleaved_latency(
        {"model": model}, texts, queries=queries, samples=True, budget_s=budget_s
    )["model"]


def interleaved_latency(
    models: dict[str, BaseClassifier],
    texts: Sequence[str],
    *,
    queries: int,
    warmup: int = 0,
    samples: bool = False,
    budget_s: float | None = None,
    block: int = 1,
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of several loaded models, taking turns query by query; with
    ``samples``, each model's figures also hold every timing (``samples_ms``, in order). With
    ``budget_s``, the loop stops once it has run that long and timed ``MIN_QUERIES`` queries.

    On a shared, noisy machine, drift (other tenants, frequency changes) then hits every model
    alike, so the ratios of their percentiles are far steadier than those of separate runs.

    ``block``: queries each model runs in a row before the next takes its turn, each turn
    opening with one untimed query. Query by query (1), a small model follows a big one and
    finds its weights out of the caches every time, which no server that runs it alone sees;
    in blocks it is timed warm, and drift still reaches every model within a second or so.
    """
    names = list(models)
    for i in range(warmup):
        for name in names:
            models[name].answer([texts[i % len(texts)]])
    times = {name: np.empty(queries, dtype=np.float64) for name in names}
    gc.collect()
    began, done = time.monotonic(), queries
    for first in range(0, queries, block):
        turn = range(first, min(first + block, queries))
        for name in names:
            if block > 1:  # its caches back, after the others' turns
                models[name].answer([texts[first % len(texts)]])
            for i in turn:
                one = [texts[i % len(texts)]]
                start = time.perf_counter_ns()
                models[name].answer(one)
                times[name][i] = time.perf_counter_ns() - start
        if _spent(began, budget_s) and turn[-1] + 1 >= MIN_QUERIES:
            done = turn[-1] + 1
            break
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ms = times[name][:done] / 1e6
        out[name] = dict(latency_percentiles(ms))
        if samples:
            out[name]["samples_ms"] = [round(float(v), 4) for v in ms]
    return out


def _spent(began: float, budget_s: float | None) -> bool:
    return budget_s is not None and time.monotonic() - began >= budget_s


def _throughput(
    model: BaseClassifier, texts: list[str], batch: int, batches: int, *, budget_s: float | None
) -> float:
    def make(k: int) -> list[str]:
        return [texts[(k * batch + j) % len(texts)] for j in range(batch)]

    model.answer(make(0))  # warm-up batch
    gc.collect()
    elapsed, done, began = 0, 0, time.monotonic()
    for k in range(1, batches + 1):
        chunk = make(k)
        start = time.perf_counter_ns()
        model.answer(chunk)
        elapsed += time.perf_counter_ns() - start
        done = k
        if _spent(began, budget_s) and done >= MIN_BATCHES:
            break
    return float(batch * done / (max(elapsed, 1) / 1e9))


@contextlib.contextmanager
def limit_threads(n: int, *models: BaseClassifier) -> Iterator[None]:
    """Run the block with ``n`` compute threads: torch (only if already imported), the
    BLAS/OpenMP pools that threadpoolctl can reach, and any of ``models`` that keep a pool of
    their own (``set_num_threads``, e.g. ONNX Runtime). Restores torch's previous setting."""
    for model in models:
        model.set_num_threads(n)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. two OpenMP runtimes loaded: not ours
                stack.enter_context(threadpool_limits(limits=n))
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            pass
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    Linux: VmHWM from /proc/self/status, which belongs to this address space. (``ru_maxrss``
    survives fork + exec, so a probe started by a 4 GB parent would report 4 GB.)
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
