"""``smallfit predict``'s loop: stream a file through an :class:`Answerer` into JSON Lines.

Rows go in batches of ``batch_size``; each batch is appended and flushed before the next is read,
so memory stays bounded and a crash loses at most the batch in flight. Every output row holds the
input's ``line`` (1-based; Parquet: row) and ``id``. A rerun continues after the last complete
row of the output (a torn last line, from a kill mid-write, is cut off first), so no row is ever
written twice. Beside the output, ``<output>.predict.json`` records what it was made from (input,
model, fields); a rerun with a different input, model or fields is refused rather than mixed in.
A bad input row is an error naming its file, line and field, after every row before it is
written.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallfit.data.stream import InputRow, count_rows, input_format, stream_rows
from smallfit.errors import DataError, SmallfitError
from smallfit.hashing import hash_json
from smallfit.models.base import MANIFEST
from smallfit.predict.answers import Answerer

OUTPUT_SUFFIXES = (".jsonl", ".json")
META_SUFFIX = ".predict.json"


@dataclass
class PredictSummary:
    """What a ``predict`` call did."""

    output: Path
    written: int
    """Rows this call wrote."""
    resumed: int
    """Rows already in the output from an earlier call (skipped)."""
    seconds: float
    tiers: dict[str, int] = field(default_factory=dict)
    """Rows this call wrote, per answering tier."""

    @property
    def rows_per_s(self) -> float | None:
        return round(self.written / self.seconds, 1) if self.seconds > 0 else None

    def line(self) -> str:
        rate = f" ({self.rows_per_s} rows/s)" if self.rows_per_s and self.written > 1 else ""
        resumed = f"; {self.resumed} already there from an earlier run" if self.resumed else ""
        tiers = ", ".join(f"{t} {n}" for t, n in self.tiers.items())
        by = f"; answered by {tiers}" if tiers else ""
        rows = "row" if self.written == 1 else "rows"
        return (
            f"wrote {self.written} {rows} to {self.output} in {self.seconds:.1f}s"
            f"{rate}{resumed}{by}"
        )


Answered = tuple[list[InputRow], list[dict[str, Any]]]
BatchEngine = Callable[[Iterator[list[InputRow]]], Iterator[Answered]]
"""Batches of rows in, each batch with its answers out, in order. When the batches end in a
:class:`DataError`, every batch read before it comes out answered first, then the error."""


def local_engine(answerer: Answerer) -> BatchEngine:
    """Each batch answered in this process, one after another."""

    def run(batches: Iterator[list[InputRow]]) -> Iterator[Answered]:
        for batch in batches:
            yield batch, answerer.answer([r.text for r in batch])

    return run


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + META_SUFFIX)


def _identity(answerer: Answerer, source: Path, fields: dict[str, Any]) -> dict[str, Any]:
    manifest = (answerer.path / MANIFEST).read_bytes()
    return {
        "input": str(source.resolve()),
        "model": str(answerer.path),
        "model_manifest": hash_json(manifest.decode("utf-8", "replace"))[:16],
        **fields,
    }


def _resume_point(output: Path, meta: dict[str, Any]) -> tuple[int, int]:
    """(last input line written, rows written) of an existing output; cuts a torn last line.
    Refuses an output made from something else."""
    side = meta_path(output)
    if not side.is_file():
        raise SmallfitError(
            f"{output} exists and was not written by smallfit predict (no {side.name}); "
            "choose another output or pass --overwrite"
        )
    try:
        before = json.loads(side.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"{side}: unreadable ({exc}); pass --overwrite to start over") from exc
    changed = [k for k in meta if before.get(k) != meta[k]]
    if changed:
        k = changed[0]
        raise SmallfitError(
            f"{output} was written with {k} {before.get(k)!r}, not {meta[k]!r}; choose another "
            "output or pass --overwrite to start over"
        )
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a row cut off mid-write: it was never complete, so it goes
        with open(output, "r+b") as handle:
            handle.truncate(end)
    rows = data.count(b"\n", 0, end)
    if not rows:
        return 0, 0
    last = data[data.rfind(b"\n", 0, end - 1) + 1 : end]
    try:
        return int(json.loads(last)["line"]), rows
    except (ValueError, KeyError, TypeError) as exc:
        raise SmallfitError(
            f"{output}:{rows}: not a prediction row ({exc}); pass --overwrite to start over"
        ) from exc


def _batches(rows: Iterator[InputRow], size: int, after: int) -> Iterator[list[InputRow]]:
    """Rows past line ``after`` in lists of ``size``; a bad row ends the stream with the rows
    read before it still yielded, then the error."""
    batch: list[InputRow] = []
    try:
        for row in rows:
            if row.line <= after:
                continue
            batch.append(row)
            if len(batch) == size:
                yield batch
                batch = []
    except DataError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def predict_file(
    answerer: Answerer,
    source: str | Path,
    output: str | Path,
    *,
    format: str = "auto",
    text_field: str = "text",
    id_field: str = "id",
    batch_size: int = 256,
    overwrite: bool = False,
    progress: bool = False,
    engine: BatchEngine | None = None,
) -> PredictSummary:
    """Answer every row of ``source`` into ``output`` (JSON Lines); see the module docstring.
    ``engine`` answers the batches (default: :func:`local_engine` over ``answerer``; the Ray
    engine spreads them over workers)."""
    from tqdm.auto import tqdm

    source, output = Path(source), Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise SmallfitError(f"{output}: predictions are written as JSON Lines; name it .jsonl")
    if batch_size < 1:
        raise SmallfitError(f"batch size must be at least 1, not {batch_size}")
    kind = input_format(source, format)
    meta = _identity(
        answerer,
        source,
        {"format": kind, "text_field": text_field, "id_field": id_field, "top_k": answerer.top_k},
    )
    if engine is None:
        answerer.ready()
    after = resumed = 0
    if output.exists() and not overwrite:
        after, resumed = _resume_point(output, meta)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"")
    meta_path(output).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    answer_batches = engine or local_engine(answerer)
    tiers: Counter[str] = Counter()
    written = 0
    started = time.monotonic()
    rows = stream_rows(source, format=kind, text_field=text_field, id_field=id_field)
    total = count_rows(source, kind) if progress else None  # a pass over the file: bar only
    with (
        open(output, "ab") as out,
        tqdm(total=total, initial=resumed, unit="row", desc="predict", disable=not progress) as bar,
    ):
        for batch, answers in answer_batches(_batches(rows, batch_size, after)):
            lines = []
            for row, got in zip(batch, answers, strict=True):
                tiers[got["tier"]] += 1
                lines.append(json.dumps({"line": row.line, "id": row.id, **got}) + "\n")
            out.write("".join(lines).encode("utf-8"))
            out.flush()
            written += len(batch)
            bar.update(len(batch))
        os.fsync(out.fileno())
    return PredictSummary(
        output=output,
        written=written,
        resumed=resumed,
        seconds=round(time.monotonic() - started, 3),
        tiers=dict(tiers.most_common()),
    )
