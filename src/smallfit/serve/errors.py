"""OpenAI's error body, for every route that answers in OpenAI's shape (the drop-in route and
the upstream passthrough)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def openai_error(
    status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)
