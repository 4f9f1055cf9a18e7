"""A lean HTTP/1.1 client for the proxy's one upstream: pooled keep-alive connections over
asyncio streams, responses parsed by ``httptools`` (uvicorn's parser), bodies streamed as they
arrive. It exists because it adds about a millisecond less per request than a general client
on these 2 cores, and the capture proxy sits on the application's critical path.

A GET or HEAD that fails on a pooled connection before any byte of the answer arrived (the
upstream closed an idle connection) is sent once more on a fresh one. A POST never is: the
upstream may have received it and a second copy could be a second paid request. Connections
idle for longer than :data:`IDLE_REUSE_S` are not reused, so the usual case (an upstream
closing idle keep-alive connections after a few seconds) costs a new connection, not an
error. Any other failure is the caller's :class:`UpstreamError`.

An answer to HEAD has no body whatever its headers say; an answer with neither
content-length nor chunked transfer encoding ends when the connection closes, and is then
complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

IDLE_REUSE_S = 4.0
"""A pooled connection idle for longer is closed rather than reused (common servers close
idle keep-alive connections after 5 s)."""
_RETRIED = ("GET", "HEAD")


class UpstreamError(Exception):
    """The upstream could not be reached, or broke off; ``timeout`` when it was too slow."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass
class _Parsed:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    headers_done: bool = False
    done: bool = False
    reusable: bool = True
    parser: object = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # asked now: once the message completes, llhttp has reset the version it reads it from
        self.reusable = bool(self.parser.should_keep_alive())  # type: ignore[attr-defined]

    def on_body(self, body: bytes) -> None:
        self.chunks.put_nowait(bytes(body))

    def on_message_complete(self) -> None:
        self.done = True
        self.chunks.put_nowait(None)


class Reply:
    """An answer whose status and headers have arrived; its body is read with
    :meth:`iter_body` (as it arrives) or :meth:`read`."""

    def __init__(self, client: UpstreamClient, conn: _Conn, parsed: _Parsed, parser: object):
        self._client, self._conn, self._parsed, self._parser = client, conn, parsed, parser
        self.status = parsed.status
        self.headers = parsed.headers
        self._closed = False

    @property
    def complete(self) -> bool:
        """Whether the whole body arrived (read it first)."""
        return self._parsed.done

    async def iter_body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                if self._parsed.chunks.empty() and not self._parsed.done:
                    await self._client._feed(self._conn, self._parser, self._parsed)
                chunk = self._parsed.chunks.get_nowait() if not self._parsed.chunks.empty() else b""
                if chunk is None:
                    break
                if chunk:
                    yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([c async for c in self.iter_body()])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        parsed = self._parsed
        keep = parsed.done and parsed.reusable
        self._client._release(self._conn, keep=keep)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0


class UpstreamClient:
    """Requests to the API root ``base_url`` (http or https), ``timeout_s`` per wait."""

    def __init__(self, base_url: str, *, timeout_s: float = 600.0, pool: int = 64) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.root = parts.path.rstrip("/")
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode()
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._pool = pool

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply:
        """Send ``method root+path`` with ``headers`` and ``body``; the reply once its status
        and headers are in."""
        head = [f"{method} {self.root}{path} HTTP/1.1".encode(), b"host: " + self.authority]
        head += [name + b": " + value for name, value in headers]
        head.append(b"content-length: " + str(len(body)).encode())
        data = b"\r\n".join(head) + b"\r\n\r\n" + body
        for attempt in (0, 1):
            conn = self._pooled() if attempt == 0 else None
            pooled = conn is not None
            conn = conn or await self._open()
            parsed = _Parsed()
            parser = httptools.HttpResponseParser(parsed)
            parsed.parser = parser
            try:
                conn.writer.write(data)
                while not parsed.headers_done:
                    if not await self._feed(conn, parser, parsed):
                        raise ConnectionResetError("the connection closed before an answer")
            except (ConnectionError, OSError, UpstreamError) as exc:
                conn.writer.close()
                timeout = isinstance(exc, UpstreamError) and exc.timeout
                if pooled and not parsed.headers and not timeout and method in _RETRIED:
                    continue  # the upstream closed an idle connection: once more, afresh
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError(f"the upstream broke off ({exc!r})") from exc
            parsed.status = parser.get_status_code()
            if parsed.status < 200:  # an interim answer (no Expect is forwarded): not ours
                conn.writer.close()
                raise UpstreamError(f"the upstream sent an interim {parsed.status} answer")
            if method == "HEAD" and not parsed.done:  # no body follows, whatever it announced
                parsed.done, parsed.reusable = True, False
                parsed.chunks.put_nowait(None)
            return Reply(self, conn, parsed, parser)
        raise AssertionError("unreachable")

    def _pooled(self) -> _Conn | None:
        """An idle connection the upstream has not closed, if any."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            fresh = now - conn.idle_since <= IDLE_REUSE_S
            if fresh and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.writer.close()
        return None

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl),
                timeout=min(self.timeout_s, 10.0),
            )
        except TimeoutError as exc:
            raise UpstreamError("connecting to the upstream timed out", timeout=True) from exc
        except OSError as exc:
            raise UpstreamError(f"the upstream cannot be reached ({exc!r})") from exc
        return _Conn(reader, writer)

    async def _feed(self, conn: _Conn, parser: object, parsed: _Parsed) -> bool:
        """Read what arrived and parse it; False when the connection closed. A timeout, a
        broken connection or a malformed answer is an :class:`UpstreamError`."""
        try:
            data = await asyncio.wait_for(conn.reader.read(65536), timeout=self.timeout_s)
            if data:
                parser.feed_data(data)  # type: ignore[attr-defined]
        except TimeoutError as exc:
            conn.writer.close()
            raise UpstreamError("the upstream did not answer in time", timeout=True) from exc
        except (OSError, httptools.HttpParserError) as exc:
            conn.writer.close()
            raise UpstreamError(f"the upstream broke off ({exc!r})") from exc
        if not data:
            if not parsed.done and parsed.headers_done:
                if _close_delimited(parsed.headers):  # its end is the connection's
                    parsed.done, parsed.reusable = True, False
                parsed.chunks.put_nowait(None)  # else cut off: the body ends here, incomplete
            return False
        return True

    def _release(self, conn: _Conn, *, keep: bool) -> None:
        if keep and len(self._idle) < self._pool and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.writer.close()

    async def aclose(self) -> None:
        while self._idle:
            writer = self._idle.pop().writer
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's body runs until the connection closes: neither a content-length
    nor a chunked transfer encoding."""
    names = {name.lower(): value.lower() for name, value in headers}
    return b"content-length" not in names and b"chunked" not in names.get(b"transfer-encoding", b"")
