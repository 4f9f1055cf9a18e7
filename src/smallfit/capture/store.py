"""The capture store: one SQLite table of exchanges (request body, response body, usage,
latency, status), never a header or a key.

The proxy hands each finished exchange to :meth:`CaptureStore.add`, which only queues it: a
writer thread commits the queue, so recording adds no disk wait to a request. Reading goes
through :meth:`CaptureStore.exchanges`.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    request TEXT,
    response TEXT,
    text TEXT,
    answer TEXT,
    status INTEGER,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    stream INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL,
    error TEXT
);
"""


@dataclass
class Exchange:
    """One request and what came back. ``request``/``response`` are the JSON bodies as sent
    (a stream's response is the completion its chunks assemble into); an import of bare texts
    or pairs has ``text`` (and ``answer``) instead. ``complete`` is true only when the whole
    answer arrived with a 2xx status: nothing else is ever trained on."""

    source: str
    path: str
    complete: bool
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    text: str | None = None
    answer: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool = False
    error: str | None = None
    time: float = 0.0
    id: int | None = None

    def row(self) -> tuple[Any, ...]:
        d = asdict(self)
        d["request"] = None if self.request is None else json.dumps(self.request)
        d["response"] = None if self.response is None else json.dumps(self.response)
        d["time"] = self.time or time.time()
        for key in ("text", "answer", "error", "source", "path"):  # a lone surrogate cannot be
            if isinstance(d[key], str):  # stored as UTF-8: it becomes "?" there
                d[key] = d[key].encode("utf-8", "replace").decode("utf-8")
        return tuple(d[c] for c in _COLUMNS)


_COLUMNS = (
    "time",
    "source",
    "path",
    "request",
    "response",
    "text",
    "answer",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "stream",
    "complete",
    "error",
)
_INSERT = f"INSERT INTO exchanges ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_STOP = object()


def _import(key: str) -> tuple[str, str]:
    return f"import:{key}", str(time.time())


class CaptureStore:
    """The exchanges in the SQLite file ``path`` (WAL mode; created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SmallfitError(f"{self.path}: not a capture database ({exc})") from exc
        if found is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(found[0]) != SCHEMA_VERSION:
            raise SmallfitError(
                f"{self.path}: capture schema {found[0]}, this smallfit reads {SCHEMA_VERSION}"
            )
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._writer: threading.Thread | None = None

    # -- writing ------------------------------------------------------------------------------

    def add(self, exchange: Exchange | Callable[[], Exchange]) -> None:
        """Queue ``exchange`` for the writer thread (started on first use). A callable is
        called there: parsing the bodies then costs the request nothing."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="capture", daemon=True)
            self._writer.start()
        self._queue.put(exchange)

    def add_now(self, exchanges: list[Exchange], *, import_key: str | None = None) -> int:
        """Write ``exchanges`` at once, in one transaction (imports); how many. With
        ``import_key``, the import is remembered in the same transaction (see
        :meth:`imported`)."""
        with self._lock, self._db:
            self._db.executemany(_INSERT, [e.row() for e in exchanges])
            if import_key is not None:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", _import(import_key))
        return len(exchanges)

    def imported(self, key: str) -> bool:
        """Whether an import with this key was written before."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM meta WHERE key=?", (_import(key)[0],)).fetchone()
        return row is not None

    def _write_loop(self) -> None:
        while True:
            rows = [self._queue.get()]
            while True:  # commit whatever else queued meanwhile in the same transaction
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is _STOP for r in rows)
            items = [r for r in rows if r is not _STOP]
            try:
                self._write(items)
            finally:
                for _ in range(len(items) + stop):
                    self._queue.task_done()
            if stop:
                return

    def _write(self, items: list[Any]) -> None:
        """Build and insert ``items``; one that cannot be stored is logged and skipped, and
        never stops the writer (the proxy goes on answering either way)."""
        built = []
        for item in items:
            try:
                built.append((item() if callable(item) else item).row())
            except Exception:
                _log.exception("an exchange could not be recorded; it is skipped")
        try:
            with self._lock, self._db:
                self._db.executemany(_INSERT, built)
        except sqlite3.Error:
            for row in built:  # one by one: only the offending row is lost
                try:
                    with self._lock, self._db:
                        self._db.execute(_INSERT, row)
                except sqlite3.Error:
                    _log.exception("an exchange could not be recorded; it is skipped")

    def flush(self) -> None:
        """Wait until every queued exchange is committed."""
        if self._writer is not None:
            self._queue.join()

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
            self._writer = None
        with self._lock:
            self._db.close()

    # -- reading ------------------------------------------------------------------------------

    def exchanges(self, *, complete_only: bool = False) -> Iterator[Exchange]:
        """Every stored exchange in arrival order (only the complete ones, if asked)."""
        where = " WHERE complete = 1" if complete_only else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, {', '.join(_COLUMNS)} FROM exchanges{where} ORDER BY id"
            ).fetchall()
        for row in rows:
            values = dict(zip(("id", *_COLUMNS), row, strict=True))
            for key in ("request", "response"):
                if values[key] is not None:
                    values[key] = json.loads(values[key])
            values["stream"], values["complete"] = bool(values["stream"]), bool(values["complete"])
            yield Exchange(**values)

    def set_upstream(self, url: str) -> None:
        """Remember the upstream the proxy records (a URL, never a key)."""
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('upstream', ?)", (url,))

    def upstream(self) -> str | None:
        """The upstream the proxy last recorded, if any."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='upstream'").fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        """``{"all", "complete"}``: how many exchanges, and how many complete."""
        with self._lock:
            total, done = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(complete), 0) FROM exchanges"
            ).fetchone()
        return {"all": int(total), "complete": int(done)}

    def __enter__(self) -> CaptureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
