"""``smallfit serve --engine ray``: N replicas of the same app behind Ray Serve's HTTP proxy.

Each replica runs :func:`~smallfit.serve.app.create_app`, the single-process server's own app
(same routes, same answers, same limits), built on the replica by Ray Serve. What the replicas
share goes through one small actor, the hub:

- **the model.** ``POST /admin/swap`` on any replica loads the new model there (a model that
  does not load is refused, and nothing changes anywhere), then publishes it; every other
  replica swaps it in within :data:`SYNC_INTERVAL_S`, each atomically (the old model finishes
  what it holds), so the swap rolls over the replicas with no failed request. A replica
  started later (a restart, a scale-up) starts on the published model.
- **the metrics.** Each replica pushes its exposition every :data:`SYNC_INTERVAL_S`; ``GET
  /metrics`` on any replica answers for the whole service (counters and histograms summed,
  gauges one series per replica; see :func:`~smallfit.serve.metrics.merge_expositions`). A
  replica silent for :data:`STALE_S` drops out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from smallfit.engine.cluster import cluster_cpus, ray_session
from smallfit.engine.config import EngineConfig
from smallfit.run.store import resolve_model_path
from smallfit.serve.app import NotShared
from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Engine, Served
from smallfit.serve.metrics import Metrics, merge_expositions

SYNC_INTERVAL_S = 0.5
STALE_S = 10.0
APP_NAME = "smallfit"


class _Hub:
    """The service's shared state (a Ray actor): the model every replica serves (its path, its
    manifest version and a sequence number), and each replica's latest metrics. A replica silent
    for :data:`STALE_S` leaves the gauges, but its counters stay in the totals, which therefore
    never go down."""

    def __init__(self, path: str) -> None:
        self.path, self.model_version, self.sequence = path, "", 0
        self.texts: dict[str, tuple[float, bytes]] = {}
        self.retired: dict[str, bytes] = {}

    def desired(self) -> tuple[str, str, int]:
        return self.path, self.model_version, self.sequence

    def publish(self, path: str, model_version: str) -> int:
        self.path, self.model_version = path, model_version
        self.sequence += 1
        return self.sequence

    def push(self, replica: str, text: bytes) -> None:
        self.texts[replica] = (time.monotonic(), text)

    def merged(self) -> bytes:
        now = time.monotonic()
        for replica, (at, text) in list(self.texts.items()):
            if now - at > STALE_S:
                self.retired[replica] = text
                del self.texts[replica]
        live = {r: text for r, (_, text) in self.texts.items()}
        return merge_expositions(live, retired=self.retired)


class RayPeers:
    """:class:`~smallfit.serve.app.Peers` through the hub. One lock orders this replica's own
    swaps (``/admin/swap``) and those it follows, so the last model published is the one it
    serves."""

    def __init__(self, hub: Any, replica: str, sequence: int) -> None:
        self.hub = hub
        self.replica = replica
        self.sequence = sequence
        self._lock = asyncio.Lock()

    def start(self, engine: Engine, metrics: Metrics) -> None:
        engine.spawn(self._follow(engine, metrics))

    async def _follow(self, engine: Engine, metrics: Metrics) -> None:
        while True:
            try:
                async with self._lock:
                    path, model_version, sequence = await self.hub.desired.remote()
                    if sequence > self.sequence:
                        self.sequence = sequence  # once: a model that fails here is not retried
                        live = engine.live
                        if live is None or live.version != model_version:
                            await engine.swap(path)
                await self.hub.push.remote(self.replica, metrics.render())
            except Exception:  # the hub gone, or a model that did not load here
                metrics.errors.labels(kind="replica_sync").inc()
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def swap(self, engine: Engine, path: Path) -> Served:
        async with self._lock:
            new = await engine.swap(path)
            try:
                self.sequence = await self.hub.publish.remote(str(new.path), new.version)
            except Exception as exc:
                raise NotShared(
                    f"swapped on this replica, but the service's hub is unreachable, so the "
                    f"other replicas keep their model ({exc})"
                ) from None
            return new

    async def exposition(self, own: bytes) -> bytes:
        try:
            await self.hub.push.remote(self.replica, own)
            merged: bytes = await self.hub.merged.remote()
        except Exception:  # the hub gone: this replica's own, and say so
            return b"# the service's hub is unreachable: this replica's metrics only\n" + own
        return merged


class _Replica:
    """One replica: the app over the service's current model (built by Ray Serve, which also
    runs the app's start-up and shut-down)."""

    def __init__(self, config: dict[str, Any], hub_name: str) -> None:
        import ray

        hub = ray.get_actor(hub_name)
        path, _, sequence = cast("tuple[str, str, int]", ray.get(hub.desired.remote()))
        self.path: str = path
        self.config: ServeConfig = ServeConfig.model_validate(config)
        self.peers: RayPeers = RayPeers(hub, f"{socket.gethostname()}:{os.getpid()}", sequence)

    def __serve_build_asgi_app__(self) -> Any:
        from smallfit.serve.app import create_app

        return create_app(self.path, self.config, peers=self.peers)


@contextlib.contextmanager
def ray_service(model_path: str | Path, config: ServeConfig, engine: EngineConfig) -> Iterator[str]:
    """The service running on Ray (started here, or on the cluster at ``engine.address``) for
    the length of a ``with``; its base URL. ``engine.workers`` replicas (default: one per CPU
    of the cluster), each with ``config.threads`` threads (default 1)."""
    path = resolve_model_path(model_path)
    threads = config.threads or 1
    config = config.model_copy(update={"threads": threads})
    with ray_session(engine.address) as ray:
        from ray import serve

        # the admin token reaches the replicas as it reaches the single server: from here
        token = os.environ.get(config.admin_token_env)
        secrets = {config.admin_token_env: token} if token else {}
        replicas = engine.workers or max(1, cluster_cpus(ray) // threads)
        hub_name = f"smallfit-serve-hub-{uuid.uuid4().hex}"
        hub = ray.remote(num_cpus=0)(_Hub).options(name=hub_name).remote(str(path))
        serve.start(http_options={"host": config.host, "port": config.port})
        deployment: Any = serve.deployment(serve.ingress()(_Replica))
        deployment = deployment.options(
            name=APP_NAME,
            num_replicas=replicas,
            ray_actor_options={"num_cpus": threads, "runtime_env": {"env_vars": secrets}},
        )
        try:
            serve.run(
                deployment.bind(config.model_dump(mode="json"), hub_name),
                name=APP_NAME,
                route_prefix="/",
            )
            yield f"http://{config.host}:{config.port}"
        finally:
            serve.delete(APP_NAME)
            if engine.address is None:  # Serve on a cluster we were given may serve others
                serve.shutdown()
            ray.kill(hub)


def serve_on_ray(model_path: str | Path, config: ServeConfig, engine: EngineConfig) -> None:
    """Serve ``model_path`` on Ray until interrupted (Ctrl-C or SIGTERM)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ray_service(model_path, config, engine):
        stop.wait()
