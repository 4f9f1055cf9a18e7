"""LLM labelling with ``engine: ray``: the requests spread over Ray workers, the bookkeeping
kept in one place.

The driver's :class:`~smallfit.llm.labeller.Labeller` still decides everything: which texts are
cached (never sent), which are identical (sent once), whether the budget has room for one more
request, and it stores each answer the moment it arrives. The workers only run
:meth:`Labeller.ask` (the local path's own function) for one text at a time, ``concurrency``
each. Every attempt's ledger row is written *before* the request goes out, as locally, by a
ledger actor that holds a second connection to the driver's SQLite store and is pinned to the
driver's machine. So:

- a worker killed mid-request leaves its attempts ``sent`` in the ledger; Ray restarts the worker
  and asks its texts again, and when an answer lands the cut-off attempts become
  ``interrupted``, their usage estimated from the answer's (the server did that work);
- a rerun of the whole job asks only the texts with no answer yet;
- the budget holds across all workers: a request starts only when the ledger's spending plus the
  expected cost of every request in flight, on every worker, leaves room for it. The overshoot
  is bounded by the requests in flight (``workers x concurrency``) costing more than the mean
  of the answers so far, the same bound as one process with that many threads.

The API key travels to the workers in Ray's runtime environment (the variable the endpoint
names), never in a manifest.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, cast

from smallfit.engine.cluster import RayUnavailable, ray_session
from smallfit.engine.config import EngineConfig
from smallfit.errors import SmallfitError
from smallfit.llm.labeller import Labeller
from smallfit.llm.store import Store, StoredAnswer

WORKER_RESTARTS = 2
LEDGER_THREADS = 32
LEDGER_FACT = "ray-ledger-token"


class _Ledger:
    """The ledger side of the driver's store, for the workers (a Ray actor on the driver's
    machine)."""

    def __init__(self, path: str, token: str) -> None:
        self.store = Store(path, recover=False)
        if self.store.fact(LEDGER_FACT) != token:  # not the file the driver has open
            raise SmallfitError(
                f"the Ray ledger actor opened another answer store than this process's ({path}); "
                "run the driver on a node of the cluster"
            )

    def ready(self) -> bool:
        return True

    def begin(self, key: str, model: str, attempt: int) -> int:
        return self.store.begin(key, model=model, attempt=attempt)

    def finish(self, request_id: int, fields: dict[str, Any]) -> None:
        self.store.finish(request_id, **fields)

    def fact(self, name: str) -> str | None:
        return self.store.fact(name)

    def remember(self, name: str, value: str) -> None:
        self.store.remember(name, value)


class _LedgerClient:
    """What a worker's labeller uses of a store: each call waits for the ledger actor, so an
    attempt's row is written before its request is sent."""

    def __init__(self, ledger: str) -> None:
        import ray

        self._get = ray.get
        self.ledger = ray.get_actor(ledger)  # by name: a restarted worker finds it again

    def begin(self, key: str, *, model: str, attempt: int) -> int:
        return cast(int, self._get(self.ledger.begin.remote(key, model, attempt)))

    def finish(self, request_id: int, **fields: Any) -> None:
        self._get(self.ledger.finish.remote(request_id, fields))

    def fact(self, name: str) -> str | None:
        return cast("str | None", self._get(self.ledger.fact.remote(name)))

    def remember(self, name: str, value: str) -> None:
        self._get(self.ledger.remember.remote(name, value))

    def close(self) -> None:
        """Nothing to close: the driver owns the store."""


class _Asker:
    """One Ray worker: a labeller that only asks (the driver stores the answers)."""

    def __init__(self, labeller: dict[str, Any], ledger: str) -> None:
        # the worker's labeller only asks: begin, finish, fact and remember reach the driver's
        # store through the ledger actor
        store = cast(Store, _LedgerClient(ledger))
        self.labeller = Labeller(store=store, **labeller)

    def ask(self, key: str, text: str) -> StoredAnswer | None:
        return self.labeller.ask(key, text)


class RayAsking:
    """:class:`~smallfit.llm.labeller.Asking` over Ray workers: each text goes to the worker
    with the fewest in flight."""

    def __init__(self, askers: list[Any]) -> None:
        self.askers = askers
        self.workers = len(askers)
        self._in_flight = [0] * len(askers)
        self._lock = threading.Lock()

    def submit(self, key: str, text: str) -> Future[StoredAnswer | None]:
        with self._lock:
            i = min(range(self.workers), key=self._in_flight.__getitem__)
            self._in_flight[i] += 1
        future: Future[StoredAnswer | None] = self.askers[i].ask.remote(key, text).future()

        def done(_: Future[StoredAnswer | None]) -> None:
            with self._lock:
                self._in_flight[i] -= 1

        future.add_done_callback(done)
        return future


@contextlib.contextmanager
def ray_asking(labeller: Labeller, engine: EngineConfig) -> Iterator[Labeller]:
    """``labeller`` with its requests spread over Ray workers for the length of a ``with``
    (Ray started here, or the cluster at ``engine.address`` joined, first: an unreachable one
    is refused before any request)."""
    if engine.address is not None and engine.address.startswith("ray://"):
        raise RayUnavailable(
            "LLM labelling keeps its answer store on the driver's machine, and a Ray Client "
            "(ray://) driver runs on the cluster: run smallfit on a node of the cluster, with "
            "--ray-address HOST:PORT"
        )
    with ray_session(engine.address) as ray:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        ledger_name = f"smallfit-ledger-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        labeller.store.remember(LEDGER_FACT, token)
        ledger = (
            ray.remote(num_cpus=0, max_concurrency=LEDGER_THREADS)(_Ledger)
            .options(
                name=ledger_name,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            )
            .remote(str(labeller.store.path.resolve()), token)
        )
        try:
            ray.get(ledger.ready.remote())
        except ray.exceptions.RayActorError as exc:
            raise SmallfitError(f"the Ray ledger actor did not start: {exc}") from None
        count = engine.workers or sum(1 for node in ray.nodes() if node.get("Alive"))
        key_env = labeller.endpoint.api_key_env
        env = {key_env: os.environ[key_env]} if key_env in os.environ else {}
        worker = ray.remote(
            num_cpus=0,
            max_concurrency=labeller.concurrency,
            max_restarts=WORKER_RESTARTS,
            max_task_retries=WORKER_RESTARTS,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env},
        )(_Asker)
        # no prices: the workers read those the driver's labeller recorded in the store
        settings = {
            "endpoint": labeller.endpoint,
            "prompt": labeller.prompt,
            "concurrency": labeller.concurrency,
        }
        askers = [worker.remote(settings, ledger_name) for _ in range(max(1, count))]
        labeller.asking = RayAsking(askers)
        try:  # a worker that dies past its restarts costs its texts (Labeller.label counts them)
            yield labeller
        finally:
            labeller.asking = None
            for actor in [*askers, ledger]:
                ray.kill(actor)


def engine_asking(
    labeller: Labeller, engine: EngineConfig | None
) -> contextlib.AbstractContextManager[Labeller]:
    """``labeller`` as ``engine`` runs it: in this process (local), or over Ray."""
    if engine is None or engine.kind == "local":
        return contextlib.nullcontext(labeller)
    return ray_asking(labeller, engine)
