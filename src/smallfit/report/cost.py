"""Monthly cost against monthly volume: an API model is paid per query; a self-hosted model
needs whole machines running all month, as many as its measured throughput requires at the
configured utilisation, so its cost is a staircase that starts at one machine. One-off costs
(labelling, training, compression) are spread over ``amortize_months``."""

from __future__ import annotations

import math
from dataclasses import dataclass

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class CostOption:
    """One way to answer the queries, with what its monthly cost depends on."""

    name: str
    kind: str  # "api", "self-hosted", "cascade"
    per_query_usd: float = 0.0
    """Paid per query (an API; a cascade's escalations to an API teacher)."""
    throughput_per_s: float | None = None
    """Queries a machine answers per second (self-hosted; a cascade's local tiers)."""
    hour_usd: float = 0.0
    utilization: float = 0.5
    one_off_usd: float = 0.0
    amortize_months: float = 12.0
    basis: str = ""

    def machines(self, volume: float) -> int:
        """Machines needed for ``volume`` queries a month (0 for an API)."""
        if self.throughput_per_s is None:
            return 0
        per_machine = self.throughput_per_s * 3600.0 * HOURS_PER_MONTH * self.utilization
        return max(1, math.ceil(volume / per_machine)) if per_machine > 0 else 1

    def monthly(self, volume: float) -> float:
        """Running cost of ``volume`` queries a month, one-off costs spread over the months."""
        hosted = self.machines(volume) * HOURS_PER_MONTH * self.hour_usd
        return hosted + volume * self.per_query_usd + self.one_off_usd / self.amortize_months


def break_even(
    cheap: CostOption, api: CostOption, *, lo: float = 1.0, hi: float = 1e12
) -> float | None:
    """The smallest monthly volume from which ``cheap`` costs no more than ``api`` (None when it
    never does below ``hi``; ``lo`` when it always does)."""
    if cheap.monthly(lo) <= api.monthly(lo):
        return lo
    if cheap.monthly(hi) > api.monthly(hi):
        return None
    a, b = math.log10(lo), math.log10(hi)  # bisection in log volume
    for _ in range(80):
        m = (a + b) / 2
        if cheap.monthly(10**m) <= api.monthly(10**m):
            b = m
        else:
            a = m
    return 10**b


def volume_grid(lo: float, hi: float, points: int = 160) -> list[float]:
    """Volumes spaced evenly in log space from ``lo`` to ``hi``."""
    a, b = math.log10(lo), math.log10(hi)
    return [10 ** (a + (b - a) * i / (points - 1)) for i in range(points)]
