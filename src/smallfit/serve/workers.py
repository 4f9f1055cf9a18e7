"""What the worker processes of ``smallfit serve --workers N`` share (see
:mod:`smallfit.serve.supervisor` for the processes): a directory of the supervisor's
(:class:`SharedDir`), read and written by :class:`FilePeers`, the file twin of Ray Serve's
hub:

- **the model.** ``POST /admin/swap`` on any worker loads the new model there (a model that
  does not load is refused, and nothing changes anywhere), then publishes it; every other worker
  swaps it in within :data:`SYNC_INTERVAL_S`, each atomically, so the swap rolls over the
  workers with no failed request. A restarted worker starts on the published model.
- **the metrics.** Each worker writes its exposition every :data:`SYNC_INTERVAL_S`; ``GET
  /metrics`` on any worker answers for the whole server (counters and histograms summed, gauges
  one series per worker; see :func:`~smallfit.serve.metrics.merge_expositions`). A worker that
  has been silent for :data:`STALE_S` (it died) leaves the gauges, and its counts stay in the
  totals.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from smallfit.serve.app import NotShared
from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Engine, Served
from smallfit.serve.metrics import Metrics, merge_expositions

SYNC_INTERVAL_S = 0.25
STALE_S = 10.0
_log = logging.getLogger("smallfit.serve")


@dataclass(frozen=True)
class Published:
    """The model every worker should serve: its directory, its manifest version and the
    sequence number of the swap that published it (0: the one the server started with)."""

    path: str
    version: str
    sequence: int


class SharedDir:
    """The directory the workers share: ``model.json`` (the published model, replaced
    atomically under ``lock``), ``config.json`` (the server's config), ``metrics/<worker>.prom``
    (each worker's latest exposition) and ``ready/<index>`` (a worker serving)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics_dir = root / "metrics"
        self.ready_dir = root / "ready"

    def create(self, path: Path, config: ServeConfig) -> None:
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.ready_dir.mkdir(exist_ok=True)
        _replace(self.root / "config.json", config.model_dump_json().encode())
        _replace(self.root / "model.json", _model_json(Published(str(path), "", 0)))

    def config(self) -> ServeConfig:
        return ServeConfig.model_validate_json((self.root / "config.json").read_bytes())

    def published(self) -> Published:
        raw = json.loads((self.root / "model.json").read_bytes())
        return Published(str(raw["path"]), str(raw["version"]), int(raw["sequence"]))

    def publish(self, path: Path, version: str) -> int:
        """Publish a model; the new sequence number."""
        with (self.root / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sequence = self.published().sequence + 1
            _replace(self.root / "model.json", _model_json(Published(str(path), version, sequence)))
            return sequence

    def push(self, worker: str, text: bytes) -> None:
        _replace(self.metrics_dir / f"{worker}.prom", text)

    def merged(self, worker: str, own: bytes) -> bytes:
        """The server's exposition: ``own`` (this worker's, fresh), the other live workers'
        latest, and the counts of those silent for :data:`STALE_S`."""
        live, retired = {worker: own}, dict[str, bytes]()
        now = time.time()
        for file in self.metrics_dir.glob("*.prom"):
            if file.stem == worker:
                continue
            try:
                text, at = file.read_bytes(), file.stat().st_mtime
            except FileNotFoundError:
                continue
            (retired if now - at > STALE_S else live)[file.stem] = text
        return merge_expositions(live, retired=retired)

    def mark_ready(self, index: int) -> None:
        (self.ready_dir / str(index)).touch()

    def unready(self, index: int) -> None:
        (self.ready_dir / str(index)).unlink(missing_ok=True)

    def ready(self, index: int) -> bool:
        return (self.ready_dir / str(index)).exists()


def _model_json(published: Published) -> bytes:
    body = {"path": published.path, "version": published.version, "sequence": published.sequence}
    return json.dumps(body).encode()


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old bytes or the new, never a part."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_bytes(data)
    os.replace(part, path)


class FilePeers:
    """:class:`~smallfit.serve.app.Peers` through a :class:`SharedDir`. One lock orders this
    worker's own swaps (``/admin/swap``) and those it follows, so the last model published is
    the one it serves."""

    def __init__(self, shared: SharedDir, worker: str, index: int, sequence: int) -> None:
        self.shared = shared
        self.worker = worker
        self.index = index
        self.sequence = sequence
        self._lock = asyncio.Lock()

    def start(self, engine: Engine, metrics: Metrics) -> None:
        self.shared.push(self.worker, metrics.render())
        self.shared.mark_ready(self.index)
        engine.spawn(self._follow(engine, metrics))
        engine.spawn(self._report(metrics))

    async def _follow(self, engine: Engine, metrics: Metrics) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                async with self._lock:
                    published = self.shared.published()
                    if published.sequence > self.sequence:
                        self.sequence = published.sequence  # once: a failing model is not retried
                        live = engine.live
                        if live is None or live.version != published.version:
                            await engine.swap(published.path)
            except Exception:  # a model that did not load here, or the directory gone
                metrics.errors.labels(kind="replica_sync").inc()
                _log.exception("worker %s could not follow the server's model", self.worker)

    async def _report(self, metrics: Metrics) -> None:
        """This worker's metrics for the others, apart from the swaps (a model that loads
        for longer than :data:`STALE_S` must not make the worker look gone)."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                self.shared.push(self.worker, metrics.render())
            except OSError:
                metrics.errors.labels(kind="replica_sync").inc()

    async def swap(self, engine: Engine, path: Path) -> Served:
        async with self._lock:
            new = await engine.swap(path)
            try:
                self.sequence = self.shared.publish(new.path, new.version)
            except OSError as exc:
                raise NotShared(
                    f"swapped on this worker, but it could not publish the model to the others, "
                    f"which keep theirs ({exc})"
                ) from None
            return new

    async def exposition(self, own: bytes) -> bytes:
        try:
            self.shared.push(self.worker, own)  # first: a scrape elsewhere never sees less
            return self.shared.merged(self.worker, own)
        except OSError:  # the directory gone: this worker's own, and say so
            return b"# the other workers' metrics are unreadable: this worker's only\n" + own
