"""The capture proxy's config: the upstream it stands in front of, where it listens, and the
SQLite file it records the traffic in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from smallfit.schema import Strict


class CaptureConfig(Strict):
    """An OpenAI-compatible reverse proxy that records each exchange."""

    upstream: str
    """The upstream's API root, as the application uses it today, e.g.
    `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`."""
    db: Path = Path("capture.sqlite")
    """The SQLite file the exchanges go to (created if missing; appended to if not)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(8001, ge=1, le=65535)
    """Port to listen on: the application's new base URL is `http://HOST:PORT/v1`."""
    timeout_s: float = Field(600.0, gt=0)
    """How long an upstream answer may take before the client gets a 504."""

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http:// or https:// URL, got {value!r}")
        if "@" in value.split("/")[2]:
            raise ValueError(
                "upstream holds credentials (user:key@host): the key goes in the client's "
                "Authorization header, which capture forwards and never stores"
            )
        return value.rstrip("/")
