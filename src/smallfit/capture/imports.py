"""Loading existing logs into a capture store instead of proxying (``smallfit capture
--import FILE --format ...``):

- ``openai``: JSON Lines of exchanges. A line is ``{"request": {...}, "response": {...}}``
  (the response may be missing: the text is then for the teacher to label), or a line of an
  OpenAI Batch API file: an input line (``custom_id``, ``body``) or an output line
  (``custom_id``, ``response.body``). Input and output lines are joined by ``custom_id``,
  across all the files of one import.
- ``pairs``: JSONL or CSV of an input and its answer (``input``/``output``; also
  ``text``/``answer``).
- ``inputs``: bare inputs for the teacher to label: JSONL or CSV with ``input`` (or
  ``text``), or a ``.txt`` file with one input a line.

A bad line is a :class:`~smallfit.errors.DataError` naming the file, line and field, and
nothing of that import is stored (earlier imports stay).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from smallfit.capture.proxy import CHAT, record_answer
from smallfit.capture.store import CaptureStore, Exchange
from smallfit.errors import DataError
from smallfit.llm.template import last_user_text

Format = Literal["openai", "pairs", "inputs"]
FORMATS: tuple[str, ...] = ("openai", "pairs", "inputs")
_INPUT = ("input", "text")
_OUTPUT = ("output", "answer")


def import_logs(files: list[Path], format: str, store: CaptureStore) -> int:
    """Read ``files`` in ``format`` into ``store``; how many exchanges were added. Files
    imported into the store before (the same bytes in the same format) add nothing: 0."""
    if format not in FORMATS:
        raise DataError(f"unknown import format {format!r}; use one of {', '.join(FORMATS)}")
    key = _import_key(files, format)
    if store.imported(key):
        return 0
    if format == "openai":
        exchanges = _openai(files)
    else:
        exchanges = [e for file in files for e in _plain(file, with_answer=format == "pairs")]
    return store.add_now(exchanges, import_key=key)


def _import_key(files: list[Path], format: str) -> str:
    """What one import is: its format and its files' bytes, in order."""
    digest = hashlib.sha256(format.encode())
    for file in files:
        if not file.is_file():
            raise DataError("no such file", file=file)
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of a JSONL or CSV file (a .txt file: ``{"input": line}``)."""
    if not file.is_file():
        raise DataError("no such file", file=file)
    try:
        text = file.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the file as UTF-8 ({exc})", file=file) from exc
    suffix = file.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for record in reader:
            yield reader.line_num, dict(record)
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if suffix == ".txt":
            yield number, {"input": line.rstrip("\r")}
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", file=file, line=number) from exc
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", file=file, line=number)
        yield number, record


def _field(record: dict[str, Any], names: tuple[str, ...], file: Path, line: int) -> str:
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if name in record:
            raise DataError(f"{name} must be a non-empty string", file=file, line=line, field=name)
    raise DataError(
        f"missing field {names[0]!r} (or {names[1]!r}); the record has {sorted(record)}",
        file=file,
        line=line,
        field=names[0],
    )


def _plain(file: Path, *, with_answer: bool) -> Iterator[Exchange]:
    source = f"import:{file.name}"
    for line, record in _rows(file):
        text = _field(record, _INPUT, file, line)
        answer = _field(record, _OUTPUT, file, line) if with_answer else None
        yield Exchange(source=source, path=CHAT, complete=with_answer, text=text, answer=answer)


def _openai(files: list[Path]) -> list[Exchange]:
    out: list[Exchange] = []
    batch: dict[str, Exchange] = {}  # custom_id -> its exchange, filled from both files
    seen: set[tuple[str, str]] = set()  # (custom_id, "input" | "output"): each once
    for file in files:
        source = f"import:{file.name}"
        for line, record in _rows(file):
            custom = record.get("custom_id")
            if "request" in record:
                out.append(_pair(record.get("request"), record.get("response"), source, file, line))
            elif isinstance(custom, str) and ("body" in record or "response" in record):
                if custom not in batch:
                    batch[custom] = Exchange(source=source, path=CHAT, complete=False)
                    out.append(batch[custom])
                entry = batch[custom]
                side = "input" if "body" in record else "output"
                if (custom, side) in seen:
                    raise DataError(
                        f"custom_id {custom!r} has a second {side} line: import one batch's "
                        "input and output files at a time",
                        file=file,
                        line=line,
                        field="custom_id",
                    )
                seen.add((custom, side))
                if side == "input":
                    entry.request = _object(record["body"], "body", file, line)
                    entry.text = last_user_text(entry.request)
                elif record.get("response") is None:  # a failed request: kept, never trained on
                    entry.status = 0
                    entry.error = f"the batch request failed: {record.get('error')}"[:500]
                else:
                    reply = _object(record.get("response"), "response", file, line)
                    status = reply.get("status_code")
                    entry.status = status if isinstance(status, int) else None
                    entry.response = (
                        reply.get("body") if isinstance(reply.get("body"), dict) else None
                    )
            else:
                raise DataError(
                    "expected {request, response}, or a Batch API line with custom_id and "
                    f"body (input) or response (output); the record has {sorted(record)}",
                    file=file,
                    line=line,
                )
    for custom, entry in batch.items():
        if entry.request is None:
            raise DataError(f"Batch output {custom!r} has no input line (its request)")
        if entry.response is not None or entry.status is not None:
            record_answer(entry, entry.status or 0, entry.response, done=True)
    return out


def _pair(request: Any, response: Any, source: str, file: Path, line: int) -> Exchange:
    exchange = Exchange(source=source, path=CHAT, complete=False)
    exchange.request = _object(request, "request", file, line)
    if response is None:  # a text for the teacher to label
        exchange.text = last_user_text(exchange.request)
    else:
        exchange.status = 200
        record_answer(exchange, 200, _object(response, "response", file, line), done=True)
    if exchange.text is None:
        raise DataError("the request has no user message", file=file, line=line, field="request")
    return exchange


def _object(value: Any, name: str, file: Path, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{name} must be a JSON object", file=file, line=line, field=name)
    return value
