"""A lean HTTP/1.1 client for the proxy's one upstream: pooled keep-alive connections over
asyncio streams, responses parsed by ``httptools`` (uvicorn's parser), bodies streamed as they
arrive. It exists because it adds about a millisecond less per request than a general client
on these 2 cores, and the capture proxy sits on the application's critical path.

A request that fails on a pooled connection before any byte of the answer arrived (the
upstream closed an idle connection) is sent once more on a fresh one; any other failure is the
caller's :class:`UpstreamError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


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

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

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
        keep = self._parsed.done and self._parser.should_keep_alive()  # type: ignore[attr-defined]
        self._client._release(self._conn, keep=keep)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


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
            try:
                conn.writer.write(data)
                while not parsed.headers_done:
                    if not await self._feed(conn, parser, parsed):
                        raise ConnectionResetError("the connection closed before an answer")
            except (ConnectionError, OSError, UpstreamError) as exc:
                conn.writer.close()
                timeout = isinstance(exc, UpstreamError) and exc.timeout
                if pooled and not parsed.headers and not timeout:
                    continue  # the upstream closed an idle connection: once more, afresh
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError(f"the upstream broke off ({exc!r})") from exc
            parsed.status = parser.get_status_code()
            if parsed.status < 200:  # an interim answer (no Expect is forwarded): not ours
                conn.writer.close()
                raise UpstreamError(f"the upstream sent an interim {parsed.status} answer")
            return Reply(self, conn, parsed, parser)
        raise AssertionError("unreachable")

    def _pooled(self) -> _Conn | None:
        """An idle connection the upstream has not closed, if any."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
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
                parsed.chunks.put_nowait(None)  # cut off: the body ends here, incomplete
            return False
        return True

    def _release(self, conn: _Conn, *, keep: bool) -> None:
        if keep and len(self._idle) < self._pool and not conn.writer.is_closing():
            self._idle.append(conn)
        else:
            conn.writer.close()

    async def aclose(self) -> None:
        while self._idle:
            writer = self._idle.pop().writer
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
