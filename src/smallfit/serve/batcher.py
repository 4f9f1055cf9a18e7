"""Dynamic micro-batching: concurrent requests' texts for one model are gathered into one
``predict_proba`` call (up to ``max_batch`` texts), run on the batcher's own worker thread so the
event loop keeps accepting requests. By default a batch is whatever queued while the previous
one ran (no waiting: batches grow with load, an idle server answers at once); ``max_wait_ms``
makes a batch wait that long after its first text for company.

A batch that fails is run again request by request, so one client's text that breaks the model
fails that client's request alone."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from smallfit.models.base import Signals

Rows = np.ndarray | Signals
"""What a batch call returns: one row per text (probabilities, or a tier's Signals)."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[Rows]


class MicroBatcher:
    """Gathers :meth:`submit` calls into batches for ``predict``; start with :meth:`start`."""

    def __init__(
        self,
        predict: Callable[[Sequence[str]], Rows],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._task: asyncio.Task[None] | None = None
        self.pending = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, texts: list[str]) -> Rows:
        """The model's answer for ``texts`` (one row each), batched with others'."""
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait(_Job(list(texts), future))
            return await future
        finally:
            self.pending -= 1

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._pool.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            job = carry or await self._queue.get()
            carry = None
            if job is None:
                return
            jobs, size = [job], len(job.texts)
            deadline = loop.time() + self.max_wait
            stop = False
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if nxt is None:
                    stop = True
                    break
                if size + len(nxt.texts) > self.max_batch:
                    carry = nxt  # starts the next batch
                    break
                jobs.append(nxt)
                size += len(nxt.texts)
            await self._run_batch(loop, jobs, size)
            if stop:
                if carry is not None:
                    await self._run_batch(loop, [carry], len(carry.texts))
                return

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], size: int
    ) -> None:
        texts = [t for job in jobs for t in job.texts]
        try:
            probs = await loop.run_in_executor(self._pool, self.predict, texts)
        except Exception as exc:
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            # one request's texts may have broken the batch: answer each request on its own,
            # so only the offending one fails
            for job in jobs:
                await self._run_batch(loop, [job], len(job.texts))
            return
        if self.on_batch is not None:
            self.on_batch(size)
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            if not job.future.done():
                job.future.set_result(probs[start:end])
            start = end
