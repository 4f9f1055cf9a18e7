"""Label texts with an LLM: cached, concurrent, retried, within a budget, every attempt in the
ledger.

Texts already answered (same model, prompt fingerprint and text) are read from the store and
never sent again; identical texts are sent once. New requests start only while the money and
token budgets hold: before starting one, the spending so far plus the expected cost of those in
flight must leave room for it. When the budget is reached, no new request starts, those in
flight finish and are kept, and the report says what was done.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from smallfit.llm.client import (
    Endpoint,
    FatalAPIError,
    FormatRejected,
    Reply,
    complete,
    make_client,
    preflight,
)
from smallfit.llm.prompt import AskPrompt
from smallfit.llm.store import Store, StoredAnswer, answer_key

FORMAT_STYLES = ("json_schema", "json_object", "text")
"""How a JSON-schema answer is asked for, tried in order until the server takes one."""


@dataclass(frozen=True)
class Budget:
    """Caps on the whole ledger's spending (reruns included); None for no cap."""

    usd: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Prices:
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6

    def describe(self) -> str:
        return (
            f"${self.input_per_1m:g}/1M prompt tokens, ${self.output_per_1m:g}/1M completion tokens"
        )


PRICES_GIVEN, PRICES_FROM_CACHE, PRICES_UNKNOWN = "given", "cache", "unknown"
"""Where a labeller's prices come from: stated (config, options or environment), recorded in
the answer cache by an earlier run that stated them, or nowhere (then 0)."""


@dataclass
class LabelReport:
    """What a labelling call did."""

    texts: int = 0
    unique: int = 0
    cached: int = 0
    answered: int = 0
    unparseable: int = 0
    failed: int = 0
    not_sent: int = 0
    stopped: str | None = None  # "budget_usd", "budget_tokens", or a fatal error
    seconds: float = 0.0
    rows_per_s: float | None = None
    spent: dict[str, Any] = field(default_factory=dict)  # the whole ledger, reruns included
    run_spent: dict[str, Any] = field(default_factory=dict)  # this call's requests only
    logprobs_missing: int = 0
    worker_failures: int = 0  # texts whose Ray worker died past its restarts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cost = self.spent.get("cost_usd", 0.0)
        tokens = self.spent.get("tokens", 0)
        parts = [
            f"{self.answered} answered",
            f"{self.cached} from cache",
            f"{self.unparseable} unparseable",
            f"{self.failed} failed",
        ]
        if self.not_sent:
            parts.append(f"{self.not_sent} not sent")
        if self.worker_failures:
            parts.append(f"{self.worker_failures} lost with a Ray worker (rerun to ask again)")
        line = f"{self.unique} texts: " + ", ".join(parts)
        line += f"; ledger total ${cost:.4f}, {tokens:,} tokens"
        if self.stopped:
            line += f"; stopped: {self.stopped}"
        return line


@dataclass(frozen=True)
class Answer:
    """One text's outcome: ``label`` None means unparseable; ``probs`` over the prompt's labels."""

    label: str | None
    probs: np.ndarray | None
    status: str


class Asking(Protocol):
    """Where a labeller's requests run when not in its own threads (Ray workers): each
    :meth:`submit` runs :meth:`Labeller.ask` for one text somewhere, the ledger rows of its
    attempts written to this labeller's store before each is sent."""

    workers: int

    def submit(self, key: str, text: str) -> Future[StoredAnswer | None]: ...


class Labeller:
    """Answers texts with one LLM endpoint and prompt, through one store.

    ``asking`` (None: this process's threads) spreads the requests over workers; the
    scheduling (cache, dedup, budget) and the answer store stay here, in one place."""

    def __init__(
        self,
        endpoint: Endpoint,
        prompt: AskPrompt,
        store: Store,
        *,
        prices: Prices | None = None,
        budget: Budget = Budget(),
        concurrency: int = 4,
    ) -> None:
        self.endpoint = endpoint
        self.prompt = prompt
        self.store = store
        self.prices, self.prices_source = self._prices(prices)
        self.budget = budget
        self.concurrency = concurrency
        self._client: Any = None
        self.asking: Asking | None = None
        self._checked = False
        self._lock = threading.Lock()
        self._style_fact = f"response_format:{endpoint.base_url}:{endpoint.model}"
        known = store.fact(self._style_fact)
        self.format_style = known if known in FORMAT_STYLES else FORMAT_STYLES[0]
        self.style_known = known in FORMAT_STYLES
        if prompt.answer != "json-schema":
            self.format_style, self.style_known = "text", True

    def _prices(self, stated: Prices | None) -> tuple[Prices, str]:
        """The prices to charge and where they come from: stated ones are recorded in the store
        for this model, so a later run that states none (a rerun without the price options)
        still prices its answers, and the cost per text, as they were bought."""
        fact = f"prices:{self.endpoint.model}"
        if stated is not None:
            self.store.remember(fact, json.dumps(asdict(stated)))
            return stated, PRICES_GIVEN
        recorded = self.store.fact(fact)
        if recorded is not None:
            return Prices(**json.loads(recorded)), PRICES_FROM_CACHE
        return Prices(), PRICES_UNKNOWN

    def per_text(self) -> tuple[float, float, float]:
        """Mean prompt and completion tokens of one answered text under this prompt (from the
        store: what the answers took, whichever run bought them), and its cost at the prices."""
        pt, ct = self.store.answer_tokens(self.endpoint.model, self.prompt.fingerprint)
        return pt, ct, self.prices.cost(pt, ct)

    def close(self) -> None:
        """Close the HTTP connections and the store."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self.store.close()

    def __enter__(self) -> Labeller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.endpoint)
        return self._client

    def check(self) -> None:
        """The free start-up checks (server, key, model); once per labeller."""
        if not self._checked:
            known = self.store.has_answers(self.endpoint.model)
            preflight(self.endpoint, self.client, answered_before=known)
            self._checked = True

    def key(self, text: str) -> str:
        return answer_key(self.endpoint.model, self.prompt.fingerprint, text)

    # ------------------------------------------------------------------ one text

    def ask(self, key: str, text: str) -> StoredAnswer | None:
        """Every request one text needs; None when they failed after retries."""
        prompt = self.prompt
        rng = random.Random(f"{prompt.seed}:{key}")
        sampling = prompt.probabilities == "samples"
        rounds = prompt.samples if sampling else 1
        replies: list[Reply] = []
        for i in range(rounds):
            reply = self._complete_any_style(key, text, i, rng)
            if reply is None:
                return None
            replies.append(reply)
        return self._interpret(replies)

    def _complete_any_style(self, key: str, text: str, i: int, rng: random.Random) -> Reply | None:
        """One completion, moving to the next response-format style when the server rejects
        the current one (the rejection costs nothing: it is a validation error). The style
        that worked is remembered in the store for later runs."""
        while True:
            style = self.format_style
            try:
                reply = self._complete(key, text, i, rng, style)
            except FormatRejected:
                with self._lock:
                    if self.format_style == style:
                        if style == FORMAT_STYLES[-1]:
                            raise
                        self.format_style = FORMAT_STYLES[FORMAT_STYLES.index(style) + 1]
                continue
            if reply is not None and not self.style_known:
                self.store.remember(self._style_fact, style)
                self.style_known = True
            return reply

    def _complete(
        self, key: str, text: str, i: int, rng: random.Random, style: str
    ) -> Reply | None:
        prompt = self.prompt
        sampling = prompt.probabilities == "samples"
        return complete(
            self.client,
            self.endpoint,
            messages=prompt.messages(text),
            response_format=prompt.response_format(style),
            logprobs=prompt.top_logprobs if prompt.probabilities == "logprobs" else None,
            max_tokens=prompt.max_tokens,
            temperature=1.0 if sampling else 0.0,
            seed=prompt.seed + i,
            begin=lambda attempt: self.store.begin(
                key, model=self.endpoint.model, attempt=attempt + 100 * i
            ),
            finish=self.store.finish,
            cost=self.prices.cost,
            rng=rng,
        )

    def _learn_style(self) -> None:
        known = self.store.fact(self._style_fact)
        if known in FORMAT_STYLES:
            self.format_style, self.style_known = known, True

    def _interpret(self, replies: list[Reply]) -> StoredAnswer:
        label, status, probs = self.prompt.interpret(replies)
        pt = sum(r.prompt_tokens for r in replies)
        ct = sum(r.completion_tokens for r in replies)
        return StoredAnswer(
            label=label,
            status=status,
            probs=None if probs is None else [float(p) for p in probs],
            reply=replies[0].content
            if len(replies) == 1
            else "\n".join(str(r.content) for r in replies),
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=self.prices.cost(pt, ct),
        )

    # ------------------------------------------------------------------ many texts

    def _room(self, in_flight: int, mean: tuple[float, float]) -> str | None:
        """None when one more request fits the budget, else which cap stops it."""
        if self.budget.usd is None and self.budget.tokens is None:
            return None
        spent = self.store.totals()
        cost_each, tokens_each = mean
        if self.budget.usd is not None and (
            spent["cost_usd"] + (in_flight + 1) * cost_each > self.budget.usd
            or spent["cost_usd"] >= self.budget.usd
        ):
            return "budget_usd"
        if self.budget.tokens is not None and (
            spent["tokens"] + (in_flight + 1) * tokens_each > self.budget.tokens
            or spent["tokens"] >= self.budget.tokens
        ):
            return "budget_tokens"
        return None

    def _mean_request(self) -> tuple[float, float]:
        """Expected cost and tokens of the next text's requests, from the answers so far."""
        pt, ct = self.store.answer_tokens(self.endpoint.model, self.prompt.fingerprint)
        if pt == 0 and ct == 0:
            return 0.0, 0.0
        return self.prices.cost(round(pt), round(ct)), pt + ct

    def label(
        self, texts: Sequence[str], *, progress: bool = True, desc: str = "LLM labelling"
    ) -> tuple[list[Answer | None], LabelReport]:
        """Answers for ``texts`` (None where none could be had) and what was done."""
        started = time.monotonic()
        report = LabelReport(texts=len(texts))
        ledger_mark = self.store.last_request()
        keys = [self.key(t) for t in texts]
        first: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            first.setdefault(key, text)
        report.unique = len(first)
        done = self.store.get(first)
        report.cached = len(done)
        todo = [k for k in first if k not in done]
        if todo:
            self.check()
        fatal: FatalAPIError | None = None
        asking = self.asking
        capacity = self.concurrency * (asking.workers if asking else 1)
        with (
            ThreadPoolExecutor(1 if asking else self.concurrency, thread_name_prefix="llm") as pool,
            tqdm(total=len(todo), desc=desc, unit="text", disable=not progress) as bar,
        ):
            pending: dict[Future[StoredAnswer | None], str] = {}
            submit = asking.submit if asking else (lambda k, t: pool.submit(self.ask, k, t))
            queue = list(reversed(todo))
            while queue or pending:
                # until the server has taken a response format, one request at a time
                room = capacity if self.style_known else 1
                while queue and len(pending) < room and fatal is None:
                    stop = self._room(len(pending), self._mean_request())
                    if stop:
                        report.stopped = stop
                        break
                    key = queue.pop()
                    pending[submit(key, first[key])] = key
                if report.stopped or fatal is not None:
                    report.not_sent = len(queue)
                    queue = []
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = pending.pop(future)
                    try:
                        answer = future.result()
                    except FatalAPIError as exc:
                        fatal = fatal or exc
                        report.failed += 1
                        continue
                    except Exception:
                        if asking is None:
                            raise
                        # a worker that died past its restarts: this text goes unanswered (a
                        # rerun asks it again) and the other workers' answers are still stored
                        report.failed += 1
                        report.worker_failures += 1
                        continue
                    if answer is None:
                        report.failed += 1
                    else:
                        self.store.put(
                            key,
                            model=self.endpoint.model,
                            fingerprint=self.prompt.fingerprint,
                            text=first[key],
                            answer=answer,
                        )
                        done[key] = answer
                        report.answered += 1
                        report.unparseable += answer.label is None
                    bar.update(1)
                if not self.style_known:  # a worker may have found it (it is in the store)
                    self._learn_style()
                if progress:
                    bar.set_postfix_str(f"${self.store.totals()['cost_usd']:.4f}")
        report.seconds = round(time.monotonic() - started, 2)
        if report.answered and report.seconds > 0:
            report.rows_per_s = round(report.answered / report.seconds, 2)
        report.spent = self.store.totals()
        report.run_spent = self.store.totals(after=ledger_mark)
        report.logprobs_missing = sum(1 for a in done.values() if a.status == "ok-no-logprobs")
        if fatal is not None:
            report.stopped = str(fatal)
            raise FatalAPIError(f"{fatal} ({report.summary()})") from fatal
        out: list[Answer | None] = []
        for key in keys:
            stored = done.get(key)
            if stored is None:
                out.append(None)
                continue
            probs = None if stored.probs is None else np.asarray(stored.probs, dtype=np.float32)
            out.append(Answer(stored.label, probs, stored.status))
        return out, report
