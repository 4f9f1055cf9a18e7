"""Serving over HTTP: ``create_app`` (FastAPI) and ``serve`` (uvicorn; one process, or
``workers`` processes on one port)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallfit.serve.config import ServeConfig

if TYPE_CHECKING:
    import uvicorn


def uvicorn_config(app: Any, config: ServeConfig | None = None) -> uvicorn.Config:
    """uvicorn's settings for the app: quiet (no access log), graceful shutdown in 5 s;
    ``config``'s host and port (a worker given a socket needs neither)."""
    import uvicorn

    config = config or ServeConfig()
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=5,
    )


def serve(model_path: str | Path, config: ServeConfig | None = None) -> None:
    """Serve ``model_path`` (a model or run directory) until interrupted."""
    config = config or ServeConfig()
    if config.workers > 1:
        from smallfit.serve.supervisor import serve_workers

        serve_workers(model_path, config)
        return
    import uvicorn

    from smallfit.serve.app import create_app

    app = create_app(model_path, config)
    uvicorn.Server(uvicorn_config(app, config)).run()


__all__ = ["ServeConfig", "serve", "uvicorn_config"]
