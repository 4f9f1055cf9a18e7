"""``--engine ray``: predict's batches answered by Ray actors, each holding one copy of the model.

The driver keeps what makes a prediction file trustworthy: it reads the input (so a bad row is
named by file and line), writes the output in input order (so a rerun resumes as the local path
does) and checks nothing is written twice. The actors run :meth:`Answerer.answer`, the local
path's own function, on the same batches, so the two files match row for row. At most two
batches per actor are in flight, which bounds memory whatever the file's size. An actor that dies
is restarted and its batch asked again (answering is idempotent); one that keeps dying stops the
run, with every batch before it written, and a rerun continues from there.

Ray reads no input format of its own here on purpose: its readers would report a malformed row
as a failed block, not as a line of the file.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smallfit.data.stream import InputRow
from smallfit.engine.cluster import cluster_cpus, start_ray
from smallfit.errors import DataError, SmallfitError
from smallfit.predict.answers import load_answerer
from smallfit.predict.file import Answered, BatchEngine

IN_FLIGHT_PER_WORKER = 2
ACTOR_RESTARTS = 2


class _Worker:
    """One model copy in a Ray actor."""

    def __init__(self, path: str, top_k: int, threads: int) -> None:
        self.answerer = load_answerer(path, top_k=top_k)
        self.answerer.model.set_num_threads(threads)  # classifiers and extractors have it

    def answer(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.answerer.answer(texts)

    def pid(self) -> int:
        return os.getpid()


@contextlib.contextmanager
def ray_engine(
    model_path: str | Path,
    *,
    top_k: int = 3,
    workers: int | None = None,
    address: str | None = None,
    threads_per_worker: int = 1,
) -> Iterator[BatchEngine]:
    """A :data:`BatchEngine` over ``workers`` actors (default: one per CPU of the cluster), each
    loading ``model_path``; stops the actors on exit (and Ray, if this call started it)."""
    ray, started_here = start_ray(address, num_cpus=workers)
    actors: list[Any] = []
    try:
        count = workers or max(1, cluster_cpus(ray) // threads_per_worker)
        actor = ray.remote(
            num_cpus=threads_per_worker,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )(_Worker)
        actors = [actor.remote(str(model_path), top_k, threads_per_worker) for _ in range(count)]

        def result(ref: Any) -> list[dict[str, Any]]:
            try:
                return ray.get(ref)  # type: ignore[no-any-return,unused-ignore]
            except ray.exceptions.RayActorError as exc:
                raise SmallfitError(
                    f"a Ray worker died {ACTOR_RESTARTS + 1} times on one batch; the rows before "
                    f"it are written, rerun to continue ({exc})"
                ) from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                raise SmallfitError(f"a Ray worker failed on a batch: {cause}") from None

        def run(batches: Iterator[list[InputRow]]) -> Iterator[Answered]:
            inflight: deque[tuple[list[InputRow], Any]] = deque()
            limit = IN_FLIGHT_PER_WORKER * len(actors)

            def drain(keep: int) -> Iterator[Answered]:
                while len(inflight) > keep:
                    batch, ref = inflight.popleft()
                    yield batch, result(ref)

            sent = 0
            try:
                for batch in batches:
                    worker = actors[sent % len(actors)]
                    sent += 1
                    inflight.append((batch, worker.answer.remote([r.text for r in batch])))
                    yield from drain(limit - 1)
            except DataError:
                yield from drain(0)  # the rows before the bad one are answered and written
                raise
            yield from drain(0)

        run.workers = actors  # type: ignore[attr-defined]  # for a test that kills one
        yield run
    finally:
        for worker in actors:
            ray.kill(worker)
        if started_here:
            ray.shutdown()
