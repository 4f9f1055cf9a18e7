"""Summary statistics of measurements, on the ground floor: evaluation and an API model's own
ledger latencies both report them in this shape."""

from __future__ import annotations

import numpy as np


def latency_percentiles(times_ms: np.ndarray) -> dict[str, float | int]:
    """p50/p95/p99, mean and count of latencies in milliseconds."""
    ms = np.asarray(times_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }
