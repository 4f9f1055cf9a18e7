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

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from smallfit.capture.client import UpstreamClient, UpstreamError
from smallfit.capture.config import CaptureConfig
from smallfit.capture.store import CaptureStore, Exchange
from smallfit.llm.headers import HOP_BY_HOP_BYTES
from smallfit.llm.template import last_user_text

CHAT = "/v1/chat/completions"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def create_capture_app(config: CaptureConfig, store: CaptureStore) -> Callable[..., Any]:
    """The proxy as a plain ASGI app (no framework: it sits on the application's critical
    path); its upstream connections open with the first request and close with the app."""
    client = UpstreamClient(config.upstream, timeout_s=config.timeout_s)
    store.set_upstream(config.upstream)
    health = json.dumps({"status": "ok", "upstream": config.upstream}).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await client.aclose()
                    store.flush()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/v1/"):
            chat = path == CHAT and scope["method"] == "POST"
            await _forward(scope, receive, send, client, store if chat else None)
        elif path == "/healthz":
            await _send(send, 200, health)
        else:
            await _send(send, 404, _error_body(f"no route {path}: the proxy serves /v1/..."))

    return app


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _send(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if headers is None:
        headers = [(b"content-type", b"application/json")]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _forward(
    scope: Scope, receive: Receive, send: Send, client: UpstreamClient, store: CaptureStore | None
) -> None:
    """Send the request on to the upstream as it came; record the exchange in ``store``."""
    body = await _body(receive)
    streamed = b'"stream"' in body and _streamed(body)
    raw = scope.get("raw_path") or scope["path"].encode()  # as sent: still percent-encoded
    query = scope.get("query_string") or b""
    target = raw[len(b"/v1") :] + (b"?" + query if query else b"")
    if any(c in target for c in b"\r\n \t"):
        await _send(send, 400, _error_body("the request target holds a space or line break"))
        return
    path = target.decode("latin-1")
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP_BYTES]
    headers.append((b"accept-encoding", b"identity"))
    started, arrived = time.perf_counter(), time.time()
    try:
        reply = await client.request(scope["method"], path, headers, body)
    except UpstreamError as exc:
        status, message = (504 if exc.timeout else 502), str(exc)
        if store is not None:
            store.add(partial(_exchange, body, arrived, streamed, status, None, None, message))
        code = "upstream_timeout" if exc.timeout else "upstream_unreachable"
        await _send(send, status, _error_body(message, code=code))
        return
    back = [(k, v) for k, v in reply.headers if k.lower() not in HOP_BY_HOP_BYTES]
    if not streamed:
        error: str | None = None
        try:
            content = await reply.read()
        except UpstreamError as exc:
            content, error = b"", str(exc)
        if error is None and not reply.complete:
            error = "the upstream's answer was cut off"
        latency = (time.perf_counter() - started) * 1000
        if error is None:
            await _send(send, reply.status, content, back)
        else:  # half an answer is no answer: the client gets a 502, as for no answer at all
            await _send(send, 502, _error_body(error, code="upstream_cut_off"))
        if store is not None:  # parsed and written by the store's thread, after the answer
            store.add(
                partial(_exchange, body, arrived, False, reply.status, content, latency, error)
            )
        return
    await send({"type": "http.response.start", "status": reply.status, "headers": back})
    chunks: list[bytes] = []
    broke: str | None = None
    gone = asyncio.Event()

    async def watch() -> None:  # the client hanging up ends the relay (and the upstream's work)
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        async for chunk in reply.iter_body():
            if gone.is_set():
                broke = "the client went away mid-stream"
                break
            chunks.append(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if broke is None and not reply.complete:
            broke = "the upstream's stream was cut off"
    except UpstreamError as exc:
        broke = f"the upstream's stream broke ({exc})"
    finally:
        watcher.cancel()
        await reply.aclose()
        latency = (time.perf_counter() - started) * 1000
        if store is not None:
            whole = b"".join(chunks)
            store.add(partial(_exchange, body, arrived, True, reply.status, whole, latency, broke))
    if broke is None:  # a cut stream stays cut for the client too: no clean end is made up
        await send({"type": "http.response.body", "body": b""})


def _streamed(body: bytes) -> bool:
    parsed = _json(body)
    return isinstance(parsed, dict) and parsed.get("stream") is True


def _exchange(
    body: bytes,
    arrived: float,
    streamed: bool,
    status: int,
    content: bytes | None,
    latency_ms: float | None,
    error: str | None,
) -> Exchange:
    """The exchange to store (built off the request path, by the store's writer thread)."""
    request = _json(body)
    exchange = Exchange(
        source="proxy",
        path=CHAT,
        complete=False,
        request=request if isinstance(request, dict) else None,
        stream=streamed,
        time=arrived,
        status=status,
        latency_ms=latency_ms,
        error=error,
    )
    if content is None:  # never reached the upstream
        exchange.text = last_user_text(exchange.request or {})
        return exchange
    if streamed:
        answer, done = assemble_stream(content)
        if exchange.error is None and not done:
            exchange.error = "the stream ended before [DONE]"
        record_answer(exchange, status, answer, done=done and error is None)
    else:
        record_answer(exchange, status, _json(content), done=error is None)
    return exchange


def _error_body(message: str, *, code: str | None = None) -> bytes:
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


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
            index = choice.get("index")
            part = parts.setdefault(
                index if isinstance(index, int) else 0, {"content": "", "finish": None}
            )
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


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
