"""The hot path: ``POST /v1/classify`` answered in plain ASGI, before FastAPI's routing,
dependency solving and body model.

A request this module can check in a few microseconds (a JSON body whose only key is ``texts``:
a list within the server's limits of valid, non-blank strings) is answered here, with the same
bytes the FastAPI route would send. Anything else (a body that is not JSON, a wrong field, a
text over the limit) is handed to the FastAPI route untouched, which refuses it with the
documented 422 naming the field. So the OpenAPI document and every error stay as they were, and
a well-formed request skips the per-request machinery.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Answer, Engine, RequestFailed, Served
from smallfit.serve.text import NOT_BLANK

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Any]

CLASSIFY_PATH = "/v1/classify"
_NOT_BLANK = re.compile(NOT_BLANK)
_JSON_HEADERS = [(b"content-type", b"application/json")]


def plain_texts(body: bytes, config: ServeConfig) -> list[str] | None:
    """The texts of a ``/v1/classify`` body that passes every check the route's body model
    makes; None for any other body (the route then says what is wrong)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict) or len(request) != 1:
        return None
    texts = request.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= config.max_texts:
        return None
    limit = config.max_text_chars
    for text in texts:
        if type(text) is not str or not 1 <= len(text) <= limit or not _NOT_BLANK.search(text):
            return None
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate
                return None
    return texts


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class FastClassify:
    """ASGI middleware answering well-formed ``POST /v1/classify`` requests (see the module
    docstring); every other request goes to ``app``."""

    def __init__(self, app: ASGIApp, engine: Engine, config: ServeConfig) -> None:
        self.app, self.engine, self.config = app, engine, config

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != CLASSIFY_PATH
            or scope["method"] != "POST"
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        texts = plain_texts(body, self.config)
        if texts is None:
            await self.app(scope, _replay(body, receive), send)
            return
        status, payload = await self._answer(texts)
        content = json.dumps(
            payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
        headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, texts: list[str]) -> tuple[int, dict[str, Any]]:
        try:
            served, answers, elapsed = await self.engine.answer(texts)
        except RequestFailed as exc:
            return exc.status, {"detail": str(exc)}
        return 200, classify_payload(served, answers, elapsed)


def classify_payload(served: Served, answers: list[Answer], elapsed: float) -> dict[str, Any]:
    """The body of a ``/v1/classify`` answer, whichever path answered it."""
    return {
        "model": served.name,
        "version": served.version,
        "results": [a.to_dict() for a in answers],
        "latency_ms": round(elapsed * 1000, 3),
    }


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A ``receive`` that gives the body already read, then whatever the client sends next."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
