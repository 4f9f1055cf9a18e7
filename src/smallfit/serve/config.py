"""The HTTP server's config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from smallfit.schema import Strict


class ServeConfig(Strict):
    """The HTTP server: where it listens, how it batches, what it refuses, who may administer."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, gt=0)
    """Server processes accepting on the port (`--workers`): each answers requests on its own
    cores, a swap reaches them all and `/metrics` adds them up. One process is bound by one
    core's speed; two on two cores answered about twice the requests a second."""
    max_batch: int = Field(32, gt=0)
    """Texts per micro-batch for a local tier."""
    max_wait_ms: float = Field(0.0, ge=0)
    """How long a micro-batch waits for company after its first text. 0 (the default): no
    waiting; a batch is whatever queued while the previous one ran, which batches under load
    and adds no latency when idle (waiting 2 ms cut single-connection throughput to a third on
    2 cores)."""
    max_texts: int = Field(64, gt=0)
    """Texts per request (more: 422)."""
    max_text_chars: int = Field(2000, gt=0)
    """Characters per text (more: 422)."""
    max_body_bytes: int = Field(1_048_576, gt=0)
    """Request body size (more: 413)."""
    top_k: int = Field(3, gt=0)
    """Probabilities returned per text."""
    threads: int | None = Field(None, gt=0)
    """Compute threads for local models (per worker); default: all usable cores but one (at
    least one), or with several workers the cores divided between them."""
    admin_token_env: str = "SMALLFIT_ADMIN_TOKEN"
    """The environment variable holding the bearer token of the admin routes (unset: admin
    routes answer 403)."""
    fallback: Literal["best-local", "error"] = "best-local"
    """When a remote tier is slow (its timeout) or down: answer with the best local answer,
    flagged, or fail the request with 503."""
    traffic_log: Path | None = None
    """JSONL file each answered text's tier, confidence and latency is appended to (never the
    text): `smallfit report RUN --from-log FILE` recomputes the tier mix, the escalation rate and
    latency from it."""
    escalation_window: int = Field(1000, gt=0)
    """Answered texts the sliding escalation rate in `/metrics` is over."""
    escalation_log: Path | None = None
    """JSONL file each escalated query is appended to with the answering tier's label (a
    training file for the next `smallfit fit`)."""
    watch: bool = False
    """Reload the model when its directory's manifest changes."""
    watch_interval_s: float = Field(2.0, gt=0)
    shadow: Path | None = None
    """A candidate model run beside the live one on live traffic (answers unaffected)."""
