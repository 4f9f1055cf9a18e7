"""A local HTTP proxy in front of an OpenAI-compatible server that misbehaves on purpose.

At a set rate, ``POST .../chat/completions`` requests meet one of these faults (chosen by a
seeded generator, so a run is repeatable):

- ``429``: answered at once with 429 and ``Retry-After`` (never forwarded);
- ``500``: answered at once with 500 (never forwarded);
- ``stall``: forwarded, but the reply is held back ``stall_s`` seconds (past the client's
  timeout), then dropped;
- ``truncate``: forwarded, and only the first half of the reply's JSON is sent back.

Two more, asked for by name, break the answer rather than the transport: the reply is whole
(its usage as the server reported it) but the message's content is replaced, by prose
(``not-json``) or by a JSON object with a field no schema declares (``off-schema``): what a
server without constrained decoding can answer.

Everything else passes through untouched. ``log`` records each request: its fault, the text
it asked about (the last user message) and, when it was forwarded, the usage the server
reported, so a test can compare the client's ledger with what the server really did. It also
keeps each request's body and ``Authorization`` header, so a test can check what was sent on.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "stall", "truncate")
CONTENT_FAULTS = {
    "not-json": "Sure! Here are the fields you asked for.",
    "off-schema": '{"no_such_field": "x"}',
}


@dataclass
class ProxyRecord:
    n: int
    time: float
    path: str
    fault: str | None
    text: str | None
    usage: dict[str, int] | None = None
    status: int | None = None
    body: bytes | None = None
    authorization: str | None = None


@dataclass
class FaultProxy:
    """Forwards to ``upstream`` (a base URL ending in /v1), injecting faults at ``rate``."""

    upstream: str
    rate: float = 0.3
    faults: tuple[str, ...] = FAULTS
    seed: int = 0
    stall_s: float = 5.0
    retry_after_s: int = 1
    log: list[ProxyRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - {*FAULTS, *CONTENT_FAULTS}
        if unknown:
            known = [*FAULTS, *CONTENT_FAULTS]
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {known}")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy._handle(self, self.rfile.read(length))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------

    def _pick(self, path: str) -> tuple[int, str | None]:
        with self._lock:
            n = len(self.log)
            fault = None
            if path.endswith("/chat/completions") and self._rng.random() < self.rate:
                fault = self._rng.choice(self.faults)
            return n, fault

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        path = handler.path
        n, fault = self._pick(path)
        record = ProxyRecord(
            n=n,
            time=time.time(),
            path=path,
            fault=fault,
            text=_text(body),
            body=body,
            authorization=handler.headers.get("Authorization"),
        )
        with self._lock:
            self.log.append(record)
        if fault == "429":
            record.status = 429
            headers = {"Retry-After": str(self.retry_after_s)}
            _send(handler, 429, _error("rate limited (injected)"), headers)
            return
        if fault == "500":
            record.status = 500
            _send(handler, 500, _error("internal error (injected)"))
            return
        status, payload, content_type = self._forward(handler, path, body)
        record.status = status
        try:
            record.usage = json.loads(payload).get("usage")
        except (ValueError, AttributeError):
            record.usage = None
        if fault == "stall":
            time.sleep(self.stall_s)
            handler.close_connection = True
            return  # the client gave up; drop the reply
        if fault == "truncate":
            payload = payload[: len(payload) // 2]
        if fault in CONTENT_FAULTS and status == 200:
            payload = _replace_content(payload, CONTENT_FAULTS[fault])
        _send(handler, status, payload, {"Content-Type": content_type})

    def _forward(
        self, handler: BaseHTTPRequestHandler, path: str, body: bytes | None
    ) -> tuple[int, bytes, str]:
        base = self.upstream.rstrip("/")
        suffix = path[path.index("/v1") + 3 :] if "/v1" in path else path
        request = urllib.request.Request(base + suffix, data=body, method=handler.command)
        for name in ("Authorization", "Content-Type"):
            if handler.headers.get(name):
                request.add_header(name, handler.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", "application/json"),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "application/json")
        except (urllib.error.URLError, OSError) as exc:
            return 502, _error(f"upstream unreachable: {exc}"), "application/json"

    # ------------------------------------------------------------------------------------

    def served(self) -> list[ProxyRecord]:
        """Requests the server answered in full and the proxy passed on intact."""
        return [r for r in self.log if r.usage is not None and r.fault is None]

    def upstream_usage(self) -> dict[str, int]:
        """Token usage the server reported over every forwarded request (faulty ones too)."""
        prompt = sum(r.usage.get("prompt_tokens", 0) for r in self.log if r.usage)
        completion = sum(r.usage.get("completion_tokens", 0) for r in self.log if r.usage)
        return {"prompt_tokens": prompt, "completion_tokens": completion}


def _text(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        messages = json.loads(body).get("messages") or []
    except ValueError:
        return None
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return users[-1] if users else None


def _replace_content(payload: bytes, content: str) -> bytes:
    """The chat completion ``payload`` with its first choice's content replaced."""
    reply = json.loads(payload)
    reply["choices"][0]["message"]["content"] = content
    return json.dumps(reply).encode()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "injected"}}).encode()


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    try:
        handler.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
