"""What the server runs: the live model (any Classifier; a Cascade is routed tier by tier, each
tier behind its own micro-batcher), the shadow, hot swaps and the escalation log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.evaluate.speed import cpu_threads_all
from smallfit.models.base import MANIFEST, BaseClassifier, read_manifest
from smallfit.models.loading import load_model
from smallfit.route.cascade import Cascade, Decisions, Raw, Tier
from smallfit.serve.batcher import MicroBatcher
from smallfit.serve.config import ServeConfig
from smallfit.serve.metrics import Metrics

_log = logging.getLogger("smallfit.serve")

WARMUP_TEXTS = ["warm up", "hello, can you help me with my account?"]

LastTier = Callable[[list[str]], Awaitable[Raw]]
"""What a route puts in place of a remote last tier for one request (the chat route: the
application's own request relayed to the upstream)."""


class TierUnavailable(SmallfitError):
    """A remote tier failed or timed out and the fallback is 'error'."""


class WrongTask(SmallfitError):
    """A route of the other task type: /v1/classify on an extractor, or the reverse."""


class RequestFailed(SmallfitError):
    """A request :meth:`Engine.answer` could not answer: ``status`` 503 (a remote tier is down
    and ``serve.fallback`` is 'error') or 500 (a model error, logged); the server goes on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    """One text's answer."""

    label: str
    probs: dict[str, float]
    confidence: float
    tier: str
    tier_index: int
    abstained: bool = False
    fallback: bool = False
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probs": self.probs,
            "confidence": self.confidence,
            "tier": self.tier,
            "tier_index": self.tier_index,
            "abstained": self.abstained,
            "fallback": self.fallback,
            "latency_ms": round(self.latency_ms, 3),
        }


@dataclass
class Served:
    """A loaded model ready to serve: its cascade view and one batcher per tier."""

    path: Path
    model: BaseClassifier
    cascade: Cascade
    batchers: list[MicroBatcher]
    version: str
    loaded_at: float = field(default_factory=time.time)
    inflight: int = 0

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def task(self) -> str:
        """``classify``, or ``extract`` for a field extractor."""
        return str(getattr(self.model, "task", "classify"))


def _version(path: Path) -> str:
    stat = (path / MANIFEST).stat()
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def load_served(path: str | Path, config: ServeConfig, metrics: Metrics | None) -> Served:
    """Load the model in ``path``, warm every tier up, and build its batchers (not started).
    Runs in a worker thread during a hot swap, so the live model keeps answering."""
    where = Path(path).resolve()
    read_manifest(where)  # a clear error for a wrong path before anything heavy
    version = _version(where)
    model = load_model(where)
    extractor = getattr(model, "task", "classify") == "extract"
    if extractor:  # one tier answering fields (no cascade of extractors yet)
        cascade = Cascade([Tier(model=model, threshold=None, path=where)], name=model.name)
    else:
        cascade = Cascade.of(model, path=where)
    threads = config.threads or max(1, cpu_threads_all() - 1)
    batchers = []
    for i, tier in enumerate(cascade.tiers):
        # what the routing loop takes back from this tier (an extractor: its answers)
        call = getattr(tier.model, "extract") if extractor else cascade.tier_call(i)  # noqa: B009
        if not tier.remote:
            tier.model.set_num_threads(threads)  # a pool of its own (ONNX Runtime)
            call(WARMUP_TEXTS)
        label = f"{i}:{tier.model.name}"
        on_batch = None
        if metrics is not None:
            hist = metrics.batch_size.labels(tier=label)
            on_batch = hist.observe
        batchers.append(
            MicroBatcher(
                call,
                max_batch=config.max_batch if not tier.remote else max(config.max_batch, 64),
                max_wait_ms=config.max_wait_ms,
                name=label,
                on_batch=on_batch,
            )
        )
    _set_torch_threads(threads)
    return Served(path=where, model=model, cascade=cascade, batchers=batchers, version=version)


def _set_torch_threads(threads: int) -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class Engine:
    """The live model, a shadow, hot swaps and the escalation log."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.live: Served | None = None
        self.shadow: Served | None = None
        self._swap_lock = asyncio.Lock()
        self._log_lock = threading.Lock()
        self._retired: list[Served] = []
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, path: str | Path) -> None:
        await self.swap(path)
        if self.config.shadow is not None:
            await self.set_shadow(self.config.shadow)

    async def _load(self, path: str | Path, metrics: Metrics | None) -> Served:
        loop = asyncio.get_running_loop()
        served = await loop.run_in_executor(None, load_served, path, self.config, metrics)
        for batcher in served.batchers:
            batcher.start()
        return served

    async def swap(self, path: str | Path) -> Served:
        """Load ``path`` beside the live model, then switch to it in one assignment; the old
        model finishes the requests it holds, then stops."""
        async with self._swap_lock:
            new = await self._load(path, self.metrics)
            old, self.live = self.live, new
            calibrated = (read_manifest(new.path).get("metrics") or {}).get("dev") or {}
            rate = calibrated.get("escalation")
            self.metrics.live_model(
                new.name, new.model.kind, float(rate) if isinstance(rate, int | float) else None
            )
            if old is not None:
                self.metrics.swaps.inc()
                self.spawn(self._retire(old))
            return new

    async def set_shadow(self, path: str | Path | None) -> Served | None:
        async with self._swap_lock:
            new = None if path is None else await self._load(path, None)
            old, self.shadow = self.shadow, new
            if old is not None:
                self.spawn(self._retire(old))
            return new

    async def _retire(self, served: Served) -> None:
        while served.inflight > 0 or any(b.pending for b in served.batchers):
            await asyncio.sleep(0.01)
        await _shut(served)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        for served in (self.live, self.shadow):
            if served is not None:
                await _shut(served)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- answering ---------------------------------------------------------------------------

    async def answer(
        self, texts: list[str], *, last: LastTier | None = None
    ) -> tuple[Served, list[Answer], float]:
        """:meth:`classify` for one request of a route, counted in the request metrics (by
        status, and the latency of those answered); also the seconds it took. A failure is a
        :class:`RequestFailed`."""
        started = time.perf_counter()
        try:
            served, answers = await self.classify(texts, last=last)
        except TierUnavailable as exc:
            self.metrics.requests.labels(status="503").inc()
            raise RequestFailed(503, str(exc)) from exc
        except WrongTask as exc:
            self.metrics.requests.labels(status="409").inc()
            raise RequestFailed(409, str(exc)) from exc
        except Exception as exc:  # a model error: this request fails, the server goes on
            raise self.model_failed(exc) from exc
        return served, answers, self.answered(started)

    def model_failed(self, exc: Exception) -> RequestFailed:
        """A request the model failed on, counted and logged: its 500 for the route."""
        self.metrics.requests.labels(status="500").inc()
        self.metrics.errors.labels(kind="request").inc()
        _log.exception("a request failed")
        message = f"the model failed on this request: {type(exc).__name__}: {exc}"
        return RequestFailed(500, message)

    def answered(self, started: float) -> float:
        """A request answered, counted with its latency since ``started``: the seconds."""
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(status="200").inc()
        self.metrics.request_latency.observe(elapsed)
        return elapsed

    async def classify(
        self, texts: list[str], *, last: LastTier | None = None
    ) -> tuple[Served, list[Answer]]:
        """Answer ``texts`` with the live model (the one live when the request arrived).
        ``last``, when given, is called instead of the cascade's last tier if that tier is
        remote and needs nothing beyond probabilities."""
        served = self.live
        if served is None:
            raise SmallfitError("no model loaded yet")
        if served.task == "extract":
            raise WrongTask(f"{served.name} extracts fields; POST /v1/extract")
        served.inflight += 1
        try:
            answers = await self._route(served, texts, last)
        finally:
            served.inflight -= 1
        shadow = self.shadow
        if shadow is not None:
            self.spawn(self._compare(shadow, texts, [a.label for a in answers]))
        return served, answers

    async def _route(
        self, served: Served, texts: list[str], last: LastTier | None = None
    ) -> list[Answer]:
        """Drive the cascade's routing loop with each tier behind its batcher (the last one
        replaced by ``last``, see :meth:`classify`); a remote tier gets the cascade's timeout."""
        cascade = served.cascade
        end = len(cascade.tiers) - 1
        if last is not None and not (cascade.tiers[end].remote and not cascade.needs(end)):
            last = None
        started = time.perf_counter()
        finished: dict[int, float] = {}  # tier index -> ms since start when it was done
        walker = cascade.walk(len(texts))
        try:
            index, rows = next(walker)
            while True:
                tier = cascade.tiers[index]
                try:
                    asked = [texts[i] for i in rows]
                    if last is not None and index == end:
                        call = last(asked)
                    else:
                        call = served.batchers[index].submit(asked)
                    timeout = cascade.timeout_s if tier.remote else None
                    raw = await asyncio.wait_for(call, timeout) if timeout else await call
                except Exception as exc:
                    local_before = any(not t.remote for t in cascade.tiers[:index])
                    if not (tier.remote and local_before):
                        self.metrics.errors.labels(kind="model").inc()
                        raise
                    kind = "timeout" if isinstance(exc, TimeoutError) else "remote"
                    self.metrics.errors.labels(kind=kind).inc()
                    if self.config.fallback == "error":
                        raise TierUnavailable(
                            f"tier {tier.model.name} failed or timed out ({type(exc).__name__})"
                        ) from exc
                    finished[index] = (time.perf_counter() - started) * 1000
                    index, rows = walker.throw(exc)
                    continue
                finished[index] = (time.perf_counter() - started) * 1000
                index, rows = walker.send(raw)
        except StopIteration as stop:
            decisions: Decisions = stop.value
        return self._answers(served, texts, decisions, finished)

    def _answers(
        self,
        served: Served,
        texts: list[str],
        decisions: Decisions,
        finished: dict[int, float],
    ) -> list[Answer]:
        """Each text's answer from the decisions; metrics and the escalation log."""
        cascade = served.cascade
        answers = []
        rows = cascade.answers(decisions, self.config.top_k)
        for row, (got, reached) in enumerate(zip(rows, decisions.reached.tolist(), strict=True)):
            answer = Answer(
                label=got.label,
                probs=got.probs,
                confidence=got.confidence,
                tier=cascade.tiers[got.tier].model.name,
                tier_index=got.tier,
                abstained=got.abstained,
                fallback=got.fallback,
                latency_ms=finished[reached],  # the last tier the text was sent to was done then
            )
            if got.tier > 0 and not (got.fallback or got.abstained):
                self._log_escalation(texts[row], answer, served)
            answers.append(answer)
        for index, tier in enumerate(cascade.tiers[:-1]):
            passed = int((decisions.reached > index).sum())
            if passed:
                self.metrics.escalations.labels(tier=tier.model.name).inc(passed)
        if decisions.abstained.any():
            self.metrics.abstentions.inc(int(decisions.abstained.sum()))
        for a in answers:
            if a.fallback:
                self.metrics.fallbacks.labels(tier=a.tier).inc()
            self.metrics.texts.labels(tier=a.tier).inc()
            self.metrics.tier_latency.labels(tier=a.tier).observe(a.latency_ms / 1000)
            self.metrics.answered(a.tier_index)
        self._log_traffic(answers, served)
        return answers

    def append_line(self, path: Path, lines: str) -> None:
        """Append ``lines`` to a log file (one writer at a time here; in one write call, so the
        lines of several worker processes never interleave)."""
        data = lines.encode("utf-8")
        with self._log_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)

    def _log_traffic(self, answers: list[Answer], served: Served) -> None:
        """Append one line per answered text to the traffic log: tier, confidence, latency."""
        if self.config.traffic_log is None:
            return
        now = round(time.time(), 3)
        lines = "".join(
            json.dumps(
                {
                    "time": now,
                    "model": served.name,
                    "tier": a.tier,
                    "tier_index": a.tier_index,
                    "tiers": len(served.cascade.tiers),
                    "confidence": round(a.confidence, 6),
                    "latency_ms": round(a.latency_ms, 3),
                    "fallback": a.fallback,
                    "abstained": a.abstained,
                }
            )
            + "\n"
            for a in answers
        )
        self.append_line(Path(self.config.traffic_log), lines)

    def _log_escalation(self, text: str, answer: Answer, served: Served) -> None:
        """Append the escalated query with the answering tier's label (a training row)."""
        if self.config.escalation_log is None:
            return
        row = {
            "text": text,
            "label": answer.label,
            "confidence": answer.confidence,
            "tier": answer.tier,
            "model": served.name,
            "time": round(time.time(), 3),
        }
        self.append_line(
            Path(self.config.escalation_log), json.dumps(row, ensure_ascii=False) + "\n"
        )

    async def _compare(self, shadow: Served, texts: list[str], live: list[str]) -> None:
        shadow.inflight += 1
        try:
            answers = await self._route_quietly(shadow, texts)
        except Exception:
            self.metrics.errors.labels(kind="shadow").inc()
            return
        finally:
            shadow.inflight -= 1
        agreed = sum(a == b for a, b in zip(answers, live, strict=True))
        self.metrics.shadow(len(texts), agreed)

    async def _route_quietly(self, served: Served, texts: list[str]) -> list[str]:
        """The shadow's labels: its first tier only when it is a cascade (no escalations or
        log rows on its account)."""
        raw = await served.batchers[0].submit(texts)
        probs = served.cascade.tier_probs(0, raw)
        return [served.cascade.labels[i] for i in probs.argmax(axis=1)]

    # -- watching ------------------------------------------------------------------------------

    async def watch(self, path: str | Path, interval_s: float) -> None:
        """Swap in ``path`` again whenever its manifest changes."""
        where = Path(path).resolve()
        while True:
            await asyncio.sleep(interval_s)
            live = self.live
            try:
                version = _version(where)
            except OSError:
                continue
            if live is not None and version != live.version and not self._swap_lock.locked():
                try:
                    await self.swap(where)
                except Exception:
                    self.metrics.errors.labels(kind="swap").inc()


async def _shut(served: Served) -> None:
    """Stop a served model's batchers (finishing what they hold), then close its tiers."""
    for batcher in served.batchers:
        await batcher.stop()
    served.cascade.close()
