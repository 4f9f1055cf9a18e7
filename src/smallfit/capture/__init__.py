"""Capturing the application's LLM traffic: an OpenAI-compatible reverse proxy that records
each exchange in SQLite (``proxy``, ``store``), or an import of logs the team already has
(``imports``).

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.capture.config import CaptureConfig
from smallfit.lazy import lazy_exports

_LAZY = {
    "CaptureStore": "smallfit.capture.store",
    "Exchange": "smallfit.capture.store",
    "create_capture_app": "smallfit.capture.proxy",
    "import_logs": "smallfit.capture.imports",
}


def run_capture(config: CaptureConfig) -> None:
    """Proxy and record until interrupted; the store is flushed and closed on the way out."""
    import uvicorn

    from smallfit.capture.proxy import create_capture_app
    from smallfit.capture.store import CaptureStore

    with CaptureStore(config.db) as store:
        uvicorn.run(
            create_capture_app(config, store),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )


__all__ = [
    "CaptureConfig",
    "CaptureStore",
    "Exchange",
    "create_capture_app",
    "import_logs",
    "run_capture",
]

__getattr__ = lazy_exports(__name__, _LAZY)
