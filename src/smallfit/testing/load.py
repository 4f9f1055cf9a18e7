"""Load for the serving tests: clients classifying texts until told to stop, and the samples of
one metric in a Prometheus exposition."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import numpy as np


class ClassifyLoad:
    """``clients`` clients, each on a connection of its own, posting random batches of 1..3 of
    ``texts`` to ``url``'s ``/v1/classify`` until the ``with`` ends (seeded: client ``i`` draws
    with seed ``i``); every request's status in ``statuses``, every transport error in
    ``errors``."""

    def __init__(self, url: str, texts: list[str], clients: int = 4) -> None:
        self.url, self.texts = url, texts
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, seed: int) -> None:
        import httpx

        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                picks = rng.integers(0, len(self.texts), 1 + seed % 3)
                body = {"texts": [self.texts[i] for i in picks]}
                try:
                    self.statuses.append(client.post("/v1/classify", json=body).status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> ClassifyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` requests beyond those sent so far are answered."""
        target, deadline = len(self.statuses) + more, time.monotonic() + timeout
        while len(self.statuses) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{more} more requests not answered in {timeout:g} s")
            time.sleep(0.02)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Each sample named ``name`` in a Prometheus exposition: its labels and value."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
