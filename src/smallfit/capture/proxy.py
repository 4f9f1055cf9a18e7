"""The capture proxy: an OpenAI-compatible reverse proxy in front of the application's
upstream. Each request goes on unchanged, with the client's own headers (its
``Authorization`` included), and the upstream's answer comes back unchanged, streamed or not.
Each ``POST /v1/chat/completions`` exchange is then recorded in the capture store: bodies,
usage, latency and status, never a header or a key. Any other ``/v1/...`` route (``GET
/v1/models``, embeddings ...) is passed through and not recorded.

When the upstream cannot be reached the client gets a 502 (a 504 past ``timeout_s``) in
OpenAI's error shape, and the exchange is recorded as incomplete, with no answer. A stream cut
before its ``data: [DONE]`` is recorded as incomplete too: only complete exchanges are ever
trained on.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from smallfit.capture.config import CaptureConfig
from smallfit.capture.store import CaptureStore, Exchange

CHAT = "/v1/chat/completions"

_HOP = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "accept-encoding",
    "content-encoding",
}
"""Headers that belong to one connection, not to the request: never forwarded either way
(the body goes uncompressed, so content-encoding is dropped with accept-encoding)."""


def create_capture_app(config: CaptureConfig, store: CaptureStore) -> Starlette:
    """The proxy as an ASGI app; its upstream client opens and closes with the app."""
    state: dict[str, httpx.AsyncClient] = {}
    store.set_upstream(config.upstream)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0))
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            state["client"] = client
            yield
        store.flush()

    async def chat(request: Request) -> Response:
        return await _forward(request, state["client"], config.upstream, store)

    async def other(request: Request) -> Response:
        return await _forward(request, state["client"], config.upstream, None)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "upstream": config.upstream})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route(CHAT, chat, methods=["POST"]),
            Route("/v1/{rest:path}", other, methods=methods),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _forward(
    request: Request, client: httpx.AsyncClient, upstream: str, store: CaptureStore | None
) -> Response:
    """Send ``request`` on to the upstream as it came; record the exchange in ``store``."""
    body = await request.body()
    parsed = _json(body)
    streamed = isinstance(parsed, dict) and parsed.get("stream") is True
    url = upstream + request.url.path[len("/v1") :]
    if request.url.query:
        url += "?" + request.url.query
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
    headers.append(("accept-encoding", "identity"))
    outgoing = client.build_request(request.method, url, content=body, headers=headers)
    started = time.perf_counter()
    exchange = Exchange(
        source="proxy",
        path=request.url.path,
        complete=False,
        request=parsed if isinstance(parsed, dict) else None,
        stream=streamed,
        time=time.time(),
    )
    try:
        reply = await client.send(outgoing, stream=streamed)
    except httpx.TimeoutException as exc:
        return _failed(exchange, store, 504, f"the upstream did not answer in time ({exc!r})")
    except httpx.HTTPError as exc:
        return _failed(exchange, store, 502, f"the upstream cannot be reached ({exc!r})")
    exchange.status = reply.status_code
    back = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP}
    if not streamed:
        exchange.latency_ms = (time.perf_counter() - started) * 1000
        record_answer(exchange, reply.status_code, _json(reply.content), done=True)
        if store is not None:
            store.add(exchange)  # only queued: the writer thread commits it
        return Response(reply.content, status_code=reply.status_code, headers=back)

    async def relay() -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        error = None
        try:
            async for chunk in reply.aiter_raw():
                chunks.append(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            error = f"the upstream's stream broke ({exc!r})"
        except BaseException:
            error = "the client went away mid-stream"
            raise
        finally:
            await reply.aclose()
            exchange.latency_ms = (time.perf_counter() - started) * 1000
            answer, done = assemble_stream(b"".join(chunks))
            exchange.error = error or (None if done else "the stream ended before [DONE]")
            record_answer(exchange, reply.status_code, answer, done=done and error is None)
            if store is not None:
                store.add(exchange)

    return StreamingResponse(relay(), status_code=reply.status_code, headers=back)


def record_answer(exchange: Exchange, status: int, response: Any, *, done: bool) -> None:
    """Fill in what came back (``response``, the parsed body); complete only for a whole 2xx
    chat completion with a text answer."""
    exchange.response = response if isinstance(response, dict) else None
    choices = (exchange.response or {}).get("choices")
    answer = None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        answer = content if isinstance(content, str) else None
    exchange.answer = answer
    exchange.complete = done and 200 <= status < 300 and answer is not None
    usage = (exchange.response or {}).get("usage")
    if isinstance(usage, dict):
        exchange.prompt_tokens = _int(usage.get("prompt_tokens"))
        exchange.completion_tokens = _int(usage.get("completion_tokens"))
    if exchange.request is not None:
        exchange.text = last_user_text(exchange.request)
    if not 200 <= status < 300 and exchange.error is None:
        exchange.error = f"upstream status {status}"


def _failed(exchange: Exchange, store: CaptureStore | None, status: int, message: str) -> Response:
    exchange.status, exchange.error = status, message
    if exchange.request is not None:
        exchange.text = last_user_text(exchange.request)
    if store is not None:
        store.add(exchange)
    code = "upstream_timeout" if status == 504 else "upstream_unreachable"
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def assemble_stream(raw: bytes) -> tuple[dict[str, Any] | None, bool]:
    """The chat completion a server-sent-event stream of chunks adds up to, and whether the
    stream reached ``data: [DONE]``. None when no chunk parsed."""
    done = False
    first: dict[str, Any] | None = None
    parts: dict[int, dict[str, Any]] = {}
    usage = None
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        chunk = _json(data.encode())
        if not isinstance(chunk, dict):
            continue
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            part = parts.setdefault(int(choice.get("index", 0)), {"content": "", "finish": None})
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                part["content"] += delta["content"]
            part["finish"] = choice.get("finish_reason") or part["finish"]
    if first is None:
        return None, done
    completion = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": p["content"]},
                "finish_reason": p["finish"],
            }
            for i, p in sorted(parts.items())
        ],
    }
    if usage is not None:
        completion["usage"] = usage
    return completion, done


def last_user_text(request: dict[str, Any]) -> str | None:
    """The text of the request's last user message (its text parts joined), if any."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [p.get("text") for p in content if isinstance(p, dict)]
                return "".join(t for t in texts if isinstance(t, str)) or None
            return None
    return None


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
