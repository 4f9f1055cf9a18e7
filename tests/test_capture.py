"""``smallfit capture``: the recording proxy in front of a real upstream (llama.cpp's server),
through the official ``openai`` client, and the import of logs a team already has."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import API_KEY

from smallfit.capture import CaptureConfig, CaptureStore, create_capture_app, import_logs
from smallfit.capture.proxy import assemble_stream
from smallfit.errors import DataError
from smallfit.testing.fault_proxy import FaultProxy
from smallfit.testing.http import serving
from smallfit.testing.llama_server import free_port

SYSTEM = "Answer with one word: the city the user names."
ASK = {
    "model": "smollm2",
    "max_tokens": 6,
    "temperature": 0,
    "seed": 0,
}


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def _stored_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.fixture
def captured(llama_url: str, tmp_path: Path) -> Iterator[tuple[str, CaptureStore]]:
    """(base URL of the capture proxy in front of llama.cpp, its store)."""
    store = CaptureStore(tmp_path / "capture.sqlite")
    app = create_capture_app(CaptureConfig(upstream=llama_url, db=store.path), store)
    with serving(app) as url:
        yield url + "/v1", store
    store.close()


@pytest.mark.server
def test_capture_passes_answers_through_and_records_them(
    llama_url: str, captured: tuple[str, CaptureStore], openai_client: Any
) -> None:
    url, store = captured
    direct = openai_client(base_url=llama_url, api_key=API_KEY, max_retries=0)
    proxied = openai_client(base_url=url, api_key=API_KEY, max_retries=0)
    text = "I am flying to Paris tomorrow."
    want = direct.chat.completions.create(messages=_messages(text), **ASK)  # type: ignore[call-overload]
    got = proxied.chat.completions.create(messages=_messages(text), **ASK)  # type: ignore[call-overload]
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage is not None and got.usage == want.usage
    streamed = proxied.chat.completions.create(  # type: ignore[call-overload]
        messages=_messages("Book me a hotel in Rome."), stream=True, **ASK
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "smollm2" in [m.id for m in proxied.models.list()]  # passed through, not recorded
    with pytest.raises(openai.AuthenticationError):  # the client's own key goes upstream
        openai_client(base_url=url, api_key="sk-wrong", max_retries=0).chat.completions.create(
            messages=_messages("Oslo"), **ASK
        )
    store.flush()
    rows = list(store.exchanges())
    assert [(r.stream, r.complete, r.status) for r in rows] == [
        (False, True, 200),
        (True, True, 200),
        (False, False, 401),
    ]
    plain, stream, refused = rows
    assert plain.request is not None and plain.request["messages"] == _messages(text)
    assert plain.answer == got.choices[0].message.content and plain.text == text
    assert plain.response is not None and plain.response["id"] == got.id
    assert (plain.prompt_tokens, plain.completion_tokens) == (
        got.usage.prompt_tokens,
        got.usage.completion_tokens,
    )
    assert plain.latency_ms is not None and plain.latency_ms > 0
    assert stream.answer == "".join(pieces) and stream.text == "Book me a hotel in Rome."
    assert refused.answer is None and refused.error == "upstream status 401"
    assert list(store.exchanges(complete_only=True)) == rows[:2]
    # no key and no header anywhere in what was stored (the database and its WAL files)
    stored = _stored_bytes(store.path).lower()
    for secret in (API_KEY, "sk-wrong", "authorization", "bearer"):
        assert secret.lower().encode() not in stored, secret


@pytest.mark.server
def test_an_upstream_that_is_down_is_a_502_and_no_answer(
    tmp_path: Path, openai_client: Any
) -> None:
    store = CaptureStore(tmp_path / "capture.sqlite")
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    app = create_capture_app(CaptureConfig(upstream=down, db=store.path), store)
    with serving(app) as url:
        client = openai_client(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(messages=_messages("Lima"), **ASK)  # type: ignore[call-overload]
    assert info.value.status_code == 502
    assert "cannot be reached" in info.value.message
    store.close()
    (row,) = CaptureStore(store.path).exchanges()
    assert (row.complete, row.status, row.response, row.answer) == (False, 502, None, None)
    assert row.text == "Lima"


@pytest.mark.server
def test_a_stream_cut_midway_is_stored_as_incomplete(
    llama_url: str, tmp_path: Path, openai_client: Any
) -> None:
    store = CaptureStore(tmp_path / "capture.sqlite")
    with FaultProxy(llama_url, rate=1.0, faults=("truncate",)) as cutter:
        app = create_capture_app(CaptureConfig(upstream=cutter.url, db=store.path), store)
        with serving(app) as url:
            client = openai_client(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
            stream = client.chat.completions.create(  # type: ignore[call-overload]
                messages=_messages("Fly me to Berlin, then Madrid."),
                stream=True,
                **{**ASK, "max_tokens": 24},
            )
            # the client sees the cut too (no clean end is made up); its record is what counts
            with contextlib.suppress(ValueError, openai.APIError, httpx.HTTPError):
                for _ in stream:
                    pass
            # a plain answer whose JSON was cut (in a whole HTTP reply) goes on as it came,
            # and is recorded without an answer
            with pytest.raises(ValueError):
                client.chat.completions.create(messages=_messages("Oslo, then Rome."), **ASK)  # type: ignore[call-overload]
    store.close()
    row, plain = CaptureStore(store.path).exchanges()
    assert row.stream and not row.complete and row.status == 200
    assert row.error in ("the stream ended before [DONE]", "the upstream's stream was cut off")
    assert not plain.complete and plain.answer is None and plain.response is None
    assert list(CaptureStore(store.path).exchanges(complete_only=True)) == []


def test_assemble_stream_adds_up_the_chunks() -> None:
    chunks = [
        {
            "id": "c1",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant"}}],
        },
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Par"}}]},
        {
            "id": "c1",
            "choices": [{"index": 0, "delta": {"content": "is"}, "finish_reason": "stop"}],
        },
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]
    raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode()
    whole, done = assemble_stream(raw + b"data: [DONE]\n\n")
    assert done and whole is not None
    assert whole["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
    ]
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 2} and whole["id"] == "c1"
    assert assemble_stream(raw)[1] is False
    assert assemble_stream(b"") == (None, False)


def test_imports_of_each_format(tmp_path: Path) -> None:
    request = {"model": "m", "messages": _messages("Trains to Vienna")}
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Vienna"}}]}
    logs = tmp_path / "logs.jsonl"
    logs.write_text(
        json.dumps({"request": request, "response": response})
        + "\n"
        + json.dumps({"request": {"messages": _messages("Flights to Quito")}})
        + "\n",
        encoding="utf-8",
    )
    batch_in, batch_out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_in.write_text(
        json.dumps({"custom_id": "r1", "method": "POST", "url": CHAT_URL, "body": request}) + "\n",
        encoding="utf-8",
    )
    body = {"status_code": 200, "body": response}
    batch_out.write_text(json.dumps({"custom_id": "r1", "response": body}) + "\n", encoding="utf-8")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('input,output\n"Bus to Oslo, please",Oslo\n', encoding="utf-8")
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("Ferry to Split\n\nTaxi to Porto\n", encoding="utf-8")
    with CaptureStore(tmp_path / "c.sqlite") as store:
        assert import_logs([logs, batch_in, batch_out], "openai", store) == 3
        assert import_logs([pairs], "pairs", store) == 1
        assert import_logs([inputs], "inputs", store) == 2
        # the same files again add nothing; the same bytes in another format are another import
        assert import_logs([logs, batch_in, batch_out], "openai", store) == 0
        assert import_logs([inputs], "inputs", store) == 0
        rows = list(store.exchanges())
    got = [(r.text, r.answer, r.complete) for r in rows]
    assert got == [
        ("Trains to Vienna", "Vienna", True),
        ("Flights to Quito", None, False),
        ("Trains to Vienna", "Vienna", True),
        ("Bus to Oslo, please", "Oslo", True),
        ("Ferry to Split", None, False),
        ("Taxi to Porto", None, False),
    ]
    assert rows[0].request == request and rows[2].status == 200
    assert {r.source for r in rows} == {
        "import:logs.jsonl",
        "import:in.jsonl",
        "import:pairs.csv",
        "import:inputs.txt",
    }


def test_a_bad_import_line_is_named_and_stores_nothing(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"input": "a", "output": "x"}) + "\n" + json.dumps({"input": "b"}) + "\n",
        encoding="utf-8",
    )
    with CaptureStore(tmp_path / "c.sqlite") as store:
        with pytest.raises(DataError) as info:
            import_logs([pairs], "pairs", store)
        assert str(info.value).startswith(f"{pairs}:2 field 'output': missing field 'output'")
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"request": {"messages": []}, "response": 3}\n', encoding="utf-8")
        with pytest.raises(DataError, match=r"broken.jsonl:1 field 'response': response must be"):
            import_logs([broken], "openai", store)
        assert store.counts() == {"all": 0, "complete": 0}


CHAT_URL = "/v1/chat/completions"


def test_the_upstream_client_reopens_a_connection_the_upstream_closed() -> None:
    """A keep-alive connection the upstream closed while idle is not an error: the request goes
    on a fresh connection (and a chunked answer is read whole)."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from smallfit.capture.client import UpstreamClient

    class OneThenHangUp(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in (b"got ", body):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True  # hangs up without saying so: an idle timeout

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OneThenHangUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def twice() -> list[bytes]:
        client = UpstreamClient(f"http://127.0.0.1:{server.server_port}/v1")
        out = []
        for body in (b"one", b"two"):
            reply = await client.request("POST", "/x", [], body)
            out.append(await reply.read())
            assert reply.complete and reply.status == 200
            await asyncio.sleep(0.05)  # the upstream hangs up meanwhile
        await client.aclose()
        return out

    try:
        assert asyncio.run(twice()) == [b"got one", b"got two"]
    finally:
        server.shutdown()
        server.server_close()


def _serve(handler: type) -> Any:
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_upstream_client_reads_head_and_close_delimited_answers_whole() -> None:
    """An answer to HEAD has no body whatever its content-length says (the client must not
    wait for one); an answer without length or chunking ends when the upstream closes, and is
    complete then, not cut."""
    import asyncio
    from http.server import BaseHTTPRequestHandler

    from smallfit.capture.client import UpstreamClient

    class Odd(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "1234")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b'{"data": []}')
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = _serve(Odd)

    async def both() -> list[tuple[bytes, bool]]:
        client = UpstreamClient(f"http://127.0.0.1:{server.server_port}/v1")
        out = []
        for method in ("HEAD", "GET", "HEAD"):
            reply = await client.request(method, "/models", [], b"")
            out.append((await asyncio.wait_for(reply.read(), 10), reply.complete))
        await client.aclose()
        return out

    try:
        assert asyncio.run(both()) == [(b"", True), (b'{"data": []}', True), (b"", True)]
    finally:
        server.shutdown()
        server.server_close()


def test_a_post_the_upstream_dropped_unanswered_is_never_sent_twice() -> None:
    """The upstream reads a POST on a pooled connection and hangs up without answering: it may
    have been a paid request, so it is not sent again (the caller gets the error); a GET that
    meets the same is sent once more on a fresh connection."""
    import asyncio
    from http.server import BaseHTTPRequestHandler

    from smallfit.capture.client import UpstreamClient, UpstreamError

    seen: list[str] = []

    class Drops(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append("POST")
            if seen.count("POST") == 2:
                self.close_connection = True  # read, then gone without a word
                return
            self._answer(b"ok")

        def do_GET(self) -> None:
            seen.append("GET")
            if seen.count("GET") == 1:
                self.close_connection = True
                return
            self._answer(b"models")

        def log_message(self, *args: object) -> None:
            pass

    server = _serve(Drops)

    async def run() -> list[bytes]:
        client = UpstreamClient(f"http://127.0.0.1:{server.server_port}/v1")
        reply = await client.request("POST", "/chat/completions", [], b"{}")
        out = [await reply.read()]
        with pytest.raises(UpstreamError, match="closed before an answer"):
            await client.request("POST", "/chat/completions", [], b"{}")
        reply = await client.request("POST", "/chat/completions", [], b"{}")  # a fresh one
        out.append(await reply.read())
        reply = await client.request("GET", "/models", [], b"")  # pooled: dropped, resent
        out.append(await reply.read())
        await client.aclose()
        return out

    try:
        assert asyncio.run(run()) == [b"ok", b"ok", b"models"]
        assert seen == ["POST", "POST", "POST", "GET", "GET"]
    finally:
        server.shutdown()
        server.server_close()


def test_bad_capture_options_and_batch_files_are_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="holds credentials"):
        CaptureConfig(upstream="https://user:sk-secret@api.example.com/v1")
    request = {"messages": _messages("Trains to Vienna")}
    lines = [
        {"custom_id": "r1", "body": request},
        {"custom_id": "r2", "body": request},
        {"custom_id": "r2", "response": None, "error": {"code": "server_error"}},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    with CaptureStore(tmp_path / "c.sqlite") as store:
        assert import_logs([batch], "openai", store) == 2
        first, failed = store.exchanges()
        assert first.text == "Trains to Vienna" and first.status is None  # for the teacher
        assert not failed.complete and "the batch request failed" in (failed.error or "")
        again = tmp_path / "again.jsonl"  # a second batch reusing the ids
        again.write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"again.jsonl:1 field 'custom_id': custom_id 'r1'"):
            import_logs([batch, again], "openai", store)


def test_an_answer_cut_mid_body_is_a_502_and_no_answer(tmp_path: Path, openai_client: Any) -> None:
    """The upstream promises 100 bytes and hangs up after 10: the client gets a 502, never
    half an answer, and the exchange is stored without one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class HangsUp(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "100")
            self.end_headers()
            self.wfile.write(b'{"choices"')
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), HangsUp)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    store = CaptureStore(tmp_path / "capture.sqlite")
    base = f"http://127.0.0.1:{upstream.server_port}/v1"
    try:
        with serving(create_capture_app(CaptureConfig(upstream=base, db=store.path), store)) as url:
            client = openai_client(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(messages=_messages("Lima"), **ASK)  # type: ignore[call-overload]
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert info.value.status_code == 502 and "cut off" in info.value.message
    store.close()
    (row,) = CaptureStore(store.path).exchanges()
    assert not row.complete and row.answer is None and row.status == 200
    assert row.error == "the upstream's answer was cut off"
