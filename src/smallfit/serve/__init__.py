"""Serving over HTTP: ``create_app`` (FastAPI) and ``serve`` (uvicorn)."""

from __future__ import annotations

from pathlib import Path

from smallfit.serve.config import ServeConfig


def serve(model_path: str | Path, config: ServeConfig | None = None) -> None:
    """Serve ``model_path`` (a model or run directory) until interrupted."""
    import uvicorn

    from smallfit.serve.app import create_app

    config = config or ServeConfig()
    app = create_app(model_path, config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=5,
    )


__all__ = ["ServeConfig", "serve"]
