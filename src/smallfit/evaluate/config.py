"""What evaluation measures per candidate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from smallfit.schema import Strict


class EvalConfig(Strict):
    """What to measure per candidate."""

    latency_queries: int = Field(200, gt=0)
    """Batch-1 queries timed per thread setting."""
    warmup: int = Field(20, ge=0)
    """Untimed queries first."""
    throughput_batch: int = Field(32, gt=0)
    """Batch size of the throughput measurement."""
    throughput_batches: int = Field(10, gt=0)
    """Batches timed for throughput."""
    probe_budget_s: float | None = Field(30.0, gt=0)
    """Seconds each latency loop (per thread setting) and the throughput loop may run once they
    have their minimum (30 queries; 2 batches); null: no limit. Only a slow model, a generative
    one, reaches it: its percentiles then rest on fewer queries (`samples_ms` keeps each)."""
    threads: list[int | Literal["all"]] = [1, "all"]
    """Thread settings for latency: numbers, or `all` (every usable core)."""
    ece_bins: int = Field(15, gt=1)
    """Equal-width confidence bins of the expected calibration error."""
    isolate: bool = Field(True, description="measure speed and memory in a fresh subprocess")
    machine_hour_usd: float = Field(0.10, ge=0)
    """What an hour of this machine costs (US dollars), for local candidates' cost per million
    queries. The default is about a 2-vCPU cloud instance on demand."""
