"""The report's prices and volumes."""

from __future__ import annotations

from pydantic import Field

from smallfit.schema import Strict


class ReportConfig(Strict):
    """The report's prices and volumes (stated on the page): what queries cost today, at growth,
    and when owning the small model pays off."""

    volume_per_month: int = Field(1_000_000, gt=0)
    """Queries a month today."""
    growth: list[float] = Field(default_factory=lambda: [2.0, 10.0])
    """Multiples of today's volume costed beside it."""
    api_input_per_1m_usd: float = Field(0.15, ge=0)
    """Reference API price per million prompt tokens, used when the teacher is not an API LLM
    (an LLM teacher's own measured tokens and prices are used when it is)."""
    api_output_per_1m_usd: float = Field(0.60, ge=0)
    """Reference API price per million completion tokens (as above)."""
    hour_usd: float | None = Field(None, ge=0)
    """Price of a machine-hour for self-hosting; null: `evaluate.machine_hour_usd`."""
    utilization: float = Field(0.5, gt=0, le=1)
    """Share of a machine's measured throughput planned for (headroom for peaks)."""
    amortize_months: float = Field(12.0, gt=0)
    """Months over which one-off costs (labelling, training, compression) are spread."""
    worst_classes: int = Field(10, gt=0)
    """Classes shown first in "where it is weaker"."""
    confused_pairs: int = Field(8, ge=0)
    """Most confused label pairs shown, each with example texts."""
    examples_per_pair: int = Field(3, ge=0)
