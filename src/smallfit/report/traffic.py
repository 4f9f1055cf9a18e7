"""What served traffic did, from ``smallfit serve --traffic-log``: the tier mix, the escalation
rate beside the one calibrated on dev, and latency, for the report's "Served traffic" section."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallfit.errors import DataError
from smallfit.stats import latency_percentiles


@dataclass(frozen=True)
class Traffic:
    """The served texts of one log: how many, by tier, escalated, and their latency."""

    source: str
    texts: int
    by_tier: dict[str, int]
    escalated: int
    fallbacks: int
    abstained: int
    latency_ms: dict[str, float | int]
    latency_by_tier_ms: dict[str, dict[str, float | int]]

    @property
    def escalation(self) -> float:
        return self.escalated / self.texts


def read_traffic(path: str | Path) -> Traffic:
    """The summary of a traffic log; a malformed line is an error naming the file and line."""
    file = Path(path)
    if not file.is_file():
        raise DataError("no such traffic log (smallfit serve --traffic-log writes one)", file=file)
    tiers: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {}
    escalated = fallbacks = abstained = 0
    for number, line in enumerate(file.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tier, index, ms = str(row["tier"]), int(row["tier_index"]), float(row["latency_ms"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a traffic log line ({exc!r})", file=file, line=number) from exc
        tiers[tier] += 1
        latencies.setdefault(tier, []).append(ms)
        escalated += index > 0
        fallbacks += bool(row.get("fallback"))
        abstained += bool(row.get("abstained"))
    total = sum(tiers.values())
    if total == 0:
        raise DataError("the traffic log is empty: no answered text", file=file)
    every = np.concatenate([np.asarray(v) for v in latencies.values()])
    return Traffic(
        source=str(file),
        texts=total,
        by_tier=dict(tiers.most_common()),
        escalated=escalated,
        fallbacks=fallbacks,
        abstained=abstained,
        latency_ms=latency_percentiles(every),
        latency_by_tier_ms={t: latency_percentiles(np.asarray(v)) for t, v in latencies.items()},
    )
