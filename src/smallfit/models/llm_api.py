"""What every model behind an LLM API shares, whatever its task: the endpoint, the prompt,
prices, budget and request limits, the answer store and its labeller, and speed and cost read
from the ledger rather than from a probe.

The model directory holds only the manifest: endpoint (URL, model, the *name* of the key's
environment variable, never the key), prompt, prices and request limits. Answers go through a
:class:`~smallfit.llm.labeller.Labeller` and its SQLite store, so a text is never paid for
twice. The store is ``cache`` in the manifest (relative to the model directory), else
``$SMALLFIT_LLM_CACHE``, else ``<smallfit cache>/llm/answers.sqlite``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.engine.config import EngineConfig
from smallfit.errors import SmallfitError
from smallfit.llm.client import Endpoint
from smallfit.llm.labeller import (
    PRICES_FROM_CACHE,
    PRICES_UNKNOWN,
    Answer,
    Budget,
    Labeller,
    LabelReport,
    Prices,
)
from smallfit.llm.prompt import AskPrompt
from smallfit.llm.store import Store


def default_cache() -> Path:
    explicit = os.environ.get("SMALLFIT_LLM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    from smallfit.zoo import cache_dir

    return cache_dir() / "llm" / "answers.sqlite"


class ApiModel:
    """The API half of an LLM model (mixed in before its task's base class)."""

    remote = True

    def __init__(
        self,
        endpoint: Endpoint,
        prompt: AskPrompt,
        *,
        name: str,
        prices: Prices | None = None,
        budget: Budget | None = None,
        concurrency: int = 4,
        cache: str | Path | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.lineage = dict(lineage or {})
        self.endpoint = endpoint
        self.prompt = prompt
        self.prices = prices  # None: the labeller uses those recorded in the answer cache
        self.budget = budget or Budget()
        self.concurrency = concurrency
        self.cache = Path(cache) if cache is not None else None
        self.bytes_on_disk = 0
        self.last_report: LabelReport | None = None
        self._labeller: Labeller | None = None
        self._home: Path | None = None
        self.engine: EngineConfig | None = None

    @property
    def store_path(self) -> Path:
        if self.cache is None:
            return default_cache()
        if self.cache.is_absolute() or self._home is None:
            return self.cache
        return (self._home / self.cache).resolve()

    @property
    def labeller(self) -> Labeller:
        if self._labeller is None:
            self._labeller = Labeller(
                self.endpoint,
                self.prompt,
                Store(self.store_path),
                prices=self.prices,
                budget=self.budget,
                concurrency=self.concurrency,
            )
        return self._labeller

    def use_engine(self, engine: EngineConfig) -> None:
        """Label over ``engine`` (``engine: ray`` spreads the requests over Ray workers)."""
        self.engine = engine

    def labelled(
        self,
        texts: Sequence[str],
        *,
        progress: bool,
        desc: str = "LLM labelling",
        spread: bool = False,
    ) -> tuple[list[Answer | None], LabelReport]:
        """The labeller's answers for ``texts``: over the engine when ``spread`` (bulk
        labelling), in this process otherwise (a cascade tier's few texts)."""
        from smallfit.llm.ray_askers import engine_asking

        with engine_asking(self.labeller, self.engine if spread else None) as labeller:
            answers, report = labeller.label(list(texts), progress=progress, desc=desc)
        self.last_report = report
        return answers, report

    def close(self) -> None:
        """Close the HTTP connections and the answer store (reopened on next use)."""
        if self._labeller is not None:
            self._labeller.close()
            self._labeller = None

    @property
    def num_parameters(self) -> int:
        return 0  # unknown: behind an API

    def set_num_threads(self, threads: int) -> None:
        """Nothing to set: the model runs elsewhere."""

    def stopped_error(self, report: LabelReport, what: str) -> SmallfitError:
        """The error of a labelling call a budget (or a fatal error) stopped."""
        return SmallfitError(
            f"{what} stopped by {report.stopped}: {report.summary()}. Every answer so far is "
            "cached: raise the budget (teacher.budget_usd / budget_tokens) and rerun"
        )

    def measured_cost(self) -> dict[str, Any] | None:
        return self.cost_per_1m_queries()

    def cost_per_1m_queries(self) -> dict[str, Any]:
        """Mean tokens of one answered text (from the store, whichever run paid for the
        answers) at the prices: the configured ones, else those an earlier run recorded."""
        labeller = self.labeller
        pt, ct, cost = labeller.per_text()
        basis = f"API prices {labeller.prices.describe()}"
        if labeller.prices_source == PRICES_FROM_CACHE:
            basis += " (as recorded in the answer cache)"
        elif labeller.prices_source == PRICES_UNKNOWN:
            basis = "no API prices given (counted as 0)"
        return {
            "per_1m_queries_usd": cost * 1e6,
            "prompt_tokens_per_query": pt,
            "completion_tokens_per_query": ct,
            "basis": basis,
        }

    def measured_speed(self) -> dict[str, Any] | None:
        """Latency of the successful requests in the ledger, as the speed probe reports it
        for local models (one "thread": requests are timed one by one)."""
        from smallfit.stats import latency_percentiles

        latencies = self.labeller.store.latencies_ms(self.endpoint.model)
        if not latencies:
            raise SmallfitError(f"{self.name}: no successful request in the ledger to time")
        stats = latency_percentiles(np.array(latencies))
        report = self.last_report
        return {
            "threads": {"1": stats},
            "requests_per_s": report.rows_per_s if report else None,
            "concurrency": self.concurrency,
            "peak_rss_bytes": None,
            "remote": True,
            "source": "ledger: latency of every successful request (queueing included)",
        }

    def api_manifest(self) -> dict[str, Any]:
        """The manifest fields of the endpoint, limits, prices, prompt and answer store."""
        return {
            "endpoint": self.endpoint.to_dict(),
            "limits": {
                "timeout_s": self.endpoint.timeout_s,
                "max_retries": self.endpoint.max_retries,
                "concurrency": self.concurrency,
                "budget_usd": self.budget.usd,
                "budget_tokens": self.budget.tokens,
            },
            "prices": None if self.prices is None else asdict(self.prices),
            "prompt": self.prompt.to_dict(),
            "cache": None if self.cache is None else str(self.cache),
        }


def api_arguments(
    path: Path, manifest: dict[str, Any], read_prompt: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """The constructor arguments an API model's manifest holds (``read_prompt`` reads its
    prompt); a clear error naming the file when one is missing."""
    try:
        limits = manifest.get("limits", {})
        endpoint = Endpoint(
            base_url=manifest["endpoint"]["base_url"],
            model=manifest["endpoint"]["model"],
            api_key_env=manifest["endpoint"].get("api_key_env", "OPENAI_API_KEY"),
            timeout_s=float(limits.get("timeout_s", 60.0)),
            max_retries=int(limits.get("max_retries", 6)),
        )
        prompt = read_prompt(manifest["prompt"])
    except (KeyError, TypeError) as exc:
        raise SmallfitError(f"{path}/smallfit.json: incomplete LLM manifest ({exc})") from exc
    return {
        "endpoint": endpoint,
        "prompt": prompt,
        "name": manifest.get("name", path.name),
        "prices": Prices(**manifest["prices"]) if manifest.get("prices") else None,
        "budget": Budget(limits.get("budget_usd"), limits.get("budget_tokens")),
        "concurrency": int(limits.get("concurrency", 4)),
        "cache": manifest.get("cache"),
        "lineage": manifest.get("lineage", {}),
    }
