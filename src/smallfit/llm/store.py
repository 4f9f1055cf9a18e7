"""The answer cache and the request ledger: one SQLite file.

``answers`` holds one row per (model, prompt fingerprint, text): the text, the label (or the
fact that the reply was unparseable), the probabilities and the reply. A text with an answer
is never sent again. ``requests`` is the ledger: one row per HTTP attempt, written *before*
the request goes out (status ``sent``) and completed when it returns, with the server's
reported usage and its cost. So after a kill -9 nothing is lost: finished answers are committed
one by one, and the attempts that were in flight show up as ``interrupted`` on the next open.

Attempts the server did work for but whose usage never reached us (timeouts, broken replies,
interruptions) get an *estimated* usage once the same prompt succeeds: the successful attempt's
usage, since the prompt is the same. Totals report measured and estimated usage apart.

WAL mode and a commit per write: a crash loses at most the attempt in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  text TEXT NOT NULL,
  label TEXT,
  status TEXT NOT NULL,
  probs TEXT,
  reply TEXT,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL,
  model TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  started REAL NOT NULL,
  finished REAL,
  status TEXT NOT NULL,
  http_status INTEGER,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  cost_usd REAL,
  estimated INTEGER NOT NULL DEFAULT 0,
  latency_ms REAL,
  error TEXT
);
CREATE INDEX IF NOT EXISTS requests_key ON requests(key);
CREATE TABLE IF NOT EXISTS facts (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
"""

# attempts the server may have done (and billed) work for, though we never saw its usage
UNSEEN_USAGE = ("timeout", "bad-response", "interrupted")


def answer_key(model: str, fingerprint: str, text: str) -> str:
    """The cache key of ``text`` under ``model`` and a prompt ``fingerprint``."""
    digest = hashlib.sha256()
    for part in (model, fingerprint, text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredAnswer:
    label: str | None
    status: str  # "ok" or "unparseable"
    probs: list[float] | None
    reply: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class Store:
    """The SQLite answer cache and request ledger (thread-safe; one connection, one lock)."""

    def __init__(self, path: str | Path, *, recover: bool = True) -> None:
        """Open (or create) the store at ``path``. ``recover`` marks the attempts a dead
        process left ``sent`` as interrupted: off for a second connection opened while this
        process's own requests may be in flight (the Ray engine's ledger)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SmallfitError(f"{self.path}: not a usable answer cache ({exc})") from exc
        self.lock = threading.Lock()
        self.interrupted = self._mark_interrupted() if recover else 0

    def close(self) -> None:
        self.db.close()

    def _mark_interrupted(self) -> int:
        """Attempts left ``sent`` by a process that died: usage unknown until estimated."""
        with self.lock:
            cur = self.db.execute(
                "UPDATE requests SET status='interrupted', error='process stopped mid-request' "
                "WHERE status='sent'"
            )
            return cur.rowcount

    # ---------------------------------------------------------------- answers

    def get(self, keys: Iterable[str]) -> dict[str, StoredAnswer]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, StoredAnswer] = {}
        with self.lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = self.db.execute(
                    "SELECT key, label, status, probs, reply, prompt_tokens, completion_tokens, "
                    f"cost_usd FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for key, label, status, probs, reply, pt, ct, cost in rows:
                    out[key] = StoredAnswer(
                        label, status, json.loads(probs) if probs else None, reply, pt, ct, cost
                    )
        return out

    def put(
        self, key: str, *, model: str, fingerprint: str, text: str, answer: StoredAnswer
    ) -> None:
        """Record an answer once (a second put of the same key is ignored), and estimate the
        usage of this key's earlier attempts whose usage we never saw."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(
                    "INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        key,
                        model,
                        fingerprint,
                        text,
                        answer.label,
                        answer.status,
                        json.dumps(answer.probs) if answer.probs is not None else None,
                        answer.reply,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.cost_usd,
                        time.time(),
                    ),
                )
                self._estimate_unseen(key)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _estimate_unseen(self, key: str) -> None:
        # an attempt of this key still ``sent`` now its answer is in was cut off: a worker
        # killed mid-request (this process asks each key in one thread, attempt after attempt)
        self.db.execute(
            "UPDATE requests SET status='interrupted', error='worker stopped mid-request' "
            "WHERE key=? AND status='sent'",
            (key,),
        )
        row = self.db.execute(
            "SELECT prompt_tokens, completion_tokens, cost_usd FROM requests "
            "WHERE key=? AND status='ok' ORDER BY id DESC LIMIT 1",
            (key,),
        ).fetchone()
        if row is None:
            return
        marks = ",".join("?" * len(UNSEEN_USAGE))
        self.db.execute(
            "UPDATE requests SET prompt_tokens=?, completion_tokens=?, cost_usd=?, estimated=1 "
            f"WHERE key=? AND status IN ({marks}) AND prompt_tokens IS NULL",
            (*row, key, *UNSEEN_USAGE),
        )

    # ---------------------------------------------------------------- facts

    def fact(self, name: str) -> str | None:
        """A remembered fact about a server (e.g. which response format it takes)."""
        with self.lock:
            row = self.db.execute("SELECT value FROM facts WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def remember(self, name: str, value: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?)", (name, value))

    # ---------------------------------------------------------------- ledger

    def record(
        self,
        key: str,
        *,
        model: str,
        fingerprint: str,
        text: str,
        answer: StoredAnswer,
        latency_ms: float | None,
    ) -> bool:
        """Put an answer the upstream gave the application (captured traffic), with a ledger
        row of status ``recorded``: its latency counts as the model's, its cost is not
        spending (the application paid it). False when the text already had an answer."""
        if self.get([key]):
            return False
        self.put(key, model=model, fingerprint=fingerprint, text=text, answer=answer)
        with self.lock:
            now = time.time()
            self.db.execute(
                "INSERT INTO requests (key, model, attempt, started, finished, status, "
                "http_status, prompt_tokens, completion_tokens, cost_usd, latency_ms) "
                "VALUES (?,?,0,?,?,'recorded',200,?,?,?,?)",
                (
                    key,
                    model,
                    now,
                    now,
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    answer.cost_usd,
                    latency_ms,
                ),
            )
        return True

    def begin(self, key: str, *, model: str, attempt: int) -> int:
        """Write the ledger row of an attempt before it is sent; returns its id."""
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO requests (key, model, attempt, started, status) "
                "VALUES (?,?,?,?,'sent')",
                (key, model, attempt, time.time()),
            )
            return int(cur.lastrowid or 0)

    def finish(
        self,
        request_id: int,
        *,
        status: str,
        http_status: int | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE requests SET finished=?, status=?, http_status=?, prompt_tokens=?, "
                "completion_tokens=?, cost_usd=?, latency_ms=?, error=?, estimated=0 WHERE id=?",
                (
                    time.time(),
                    status,
                    http_status,
                    prompt_tokens,
                    completion_tokens,
                    cost_usd,
                    latency_ms,
                    error[:500] if error else None,
                    request_id,
                ),
            )

    def last_request(self) -> int:
        """The id of the ledger's latest attempt (0 when empty): ``totals(after=...)`` then
        counts only the attempts made since."""
        with self.lock:
            row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()
        return int(row[0])

    def totals(self, *, after: int = 0) -> dict[str, Any]:
        """Spending over the ledger's attempts with an id above ``after`` (default: all of
        them): measured and estimated usage apart."""
        with self.lock:
            rows = self.db.execute(
                "SELECT estimated, COUNT(*), COALESCE(SUM(prompt_tokens),0), "
                "COALESCE(SUM(completion_tokens),0), COALESCE(SUM(cost_usd),0) "
                "FROM requests WHERE id > ? AND status != 'recorded' GROUP BY estimated",
                (after,),
            ).fetchall()
            by_status = dict(
                self.db.execute(
                    "SELECT status, COUNT(*) FROM requests WHERE id > ? AND status != 'recorded' "
                    "GROUP BY status",
                    (after,),
                ).fetchall()
            )
            unknown = self.db.execute(
                f"SELECT COUNT(*) FROM requests WHERE id > ? AND status IN "
                f"({','.join('?' * len(UNSEEN_USAGE))}) AND prompt_tokens IS NULL",
                (after, *UNSEEN_USAGE),
            ).fetchone()[0]
        out: dict[str, Any] = {"requests": sum(r[1] for r in rows), "by_status": by_status}
        for estimated, _, prompt, completion, cost in rows:
            part = "estimated" if estimated else "measured"
            out[part] = {
                "prompt_tokens": int(prompt),
                "completion_tokens": int(completion),
                "cost_usd": float(cost),
            }
        for part in ("measured", "estimated"):
            out.setdefault(part, {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
        out["tokens"] = sum(
            out[p]["prompt_tokens"] + out[p]["completion_tokens"] for p in ("measured", "estimated")
        )
        out["cost_usd"] = out["measured"]["cost_usd"] + out["estimated"]["cost_usd"]
        out["usage_unknown_requests"] = int(unknown)
        return out

    def has_answers(self, model: str) -> bool:
        """Whether any answer from ``model`` is stored (it exists, by that name)."""
        with self.lock:
            row = self.db.execute(
                "SELECT 1 FROM answers WHERE model=? AND status != 'unparseable' LIMIT 1",
                (model,),
            ).fetchone()
        return row is not None

    def latencies_ms(self, model: str) -> list[float]:
        """Latency of every successful attempt to ``model``, in ledger order."""
        with self.lock:
            rows = self.db.execute(
                "SELECT latency_ms FROM requests WHERE model=? AND status IN ('ok', 'recorded') "
                "AND latency_ms IS NOT NULL ORDER BY id",
                (model,),
            ).fetchall()
        return [float(r[0]) for r in rows]

    def answer_costs(self, model: str, fingerprint: str) -> list[float]:
        with self.lock:
            rows = self.db.execute(
                "SELECT cost_usd FROM answers WHERE model=? AND fingerprint=?",
                (model, fingerprint),
            ).fetchall()
        return [float(r[0]) for r in rows]

    def answer_tokens(self, model: str, fingerprint: str) -> tuple[float, float]:
        """Mean prompt and completion tokens per answer."""
        with self.lock:
            row = self.db.execute(
                "SELECT AVG(prompt_tokens), AVG(completion_tokens) FROM answers "
                "WHERE model=? AND fingerprint=?",
                (model, fingerprint),
            ).fetchone()
        return float(row[0] or 0.0), float(row[1] or 0.0)
