"""Talking to an OpenAI-compatible server: start-up checks and one answer with retries.

The official ``openai`` client does the HTTP; its own retries are off (``max_retries=0``) so
that every attempt is ours to count in the ledger. Retried: 429 (waiting ``retry-after-ms`` or
``Retry-After`` when the server sends one), 5xx, timeouts, connection errors and replies that
do not parse. Waits are exponential with full jitter, seeded per text, so runs are repeatable.
Other 4xx replies are not retried: 401/403/404 stop the run, a 400 fails that text only.

The API key is read from the environment and handed to the client; it is never logged, stored
or put in an error message.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smallfit.errors import SmallfitError

OPENAI_URL = "https://api.openai.com/v1"
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0


class FatalAPIError(SmallfitError):
    """The server refuses every request (bad key, unknown model, wrong URL): stop the run."""


class FormatRejected(SmallfitError):
    """The server does not take this ``response_format`` (try the next style)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the LLM is and how to reach it; ``api_key_env`` names the key's variable."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 6

    def to_dict(self) -> dict[str, Any]:
        """For manifests and reports: never the key itself."""
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env}


def resolve_endpoint(
    base_url: str | None,
    model: str | None,
    *,
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 60.0,
    max_retries: int = 6,
) -> Endpoint:
    """Fill unset fields from the environment; a clear error when the model is unknown."""
    url = (
        base_url
        or os.environ.get("SMALLFIT_LLM_BASE_URL")
        or os.environ.get("OPENAI_BASE_URL")
        or OPENAI_URL
    )
    name = model or os.environ.get("SMALLFIT_LLM_MODEL")
    if not name:
        raise SmallfitError("teacher.model: no model named (set it, or SMALLFIT_LLM_MODEL)")
    if not url.startswith(("http://", "https://")):
        raise SmallfitError(f"teacher.base_url: {url!r} is not an http(s) URL")
    return Endpoint(url.rstrip("/"), name, api_key_env, timeout_s, max_retries)


def env_prices() -> tuple[float, float] | None:
    """Prices per million tokens from the environment (one unset is 0); None when neither is
    set."""
    names = ("SMALLFIT_LLM_PRICE_INPUT", "SMALLFIT_LLM_PRICE_OUTPUT")
    if not any(os.environ.get(var) for var in names):
        return None
    out = []
    for var in names:
        raw = os.environ.get(var) or "0"
        try:
            out.append(float(raw))
        except ValueError as exc:
            raise SmallfitError(f"{var}={raw!r} is not a number (dollars per 1M tokens)") from exc
    return out[0], out[1]


def _api_key(endpoint: Endpoint) -> str:
    key = os.environ.get(endpoint.api_key_env)
    if key:
        return key
    if endpoint.base_url.startswith(OPENAI_URL):
        raise SmallfitError(f"no API key: set the environment variable {endpoint.api_key_env}")
    return "none"  # local servers usually take any key; the client insists on one


def make_client(endpoint: Endpoint) -> Any:
    import openai

    return openai.OpenAI(
        base_url=endpoint.base_url,
        api_key=_api_key(endpoint),
        max_retries=0,
        timeout=endpoint.timeout_s,
    )


def preflight(
    endpoint: Endpoint, client: Any | None = None, *, answered_before: bool = False
) -> list[str]:
    """Check, with a free ``GET /models``, that the server is there, takes the key and serves
    the model; returns the models it lists. Every failure is a clear :class:`FatalAPIError`.
    ``answered_before``: the model has answered before (an answer cache, or captured traffic,
    holds its answers), so a list that does not name it (an alias, a proxy) is no error."""
    import openai

    client = client or make_client(endpoint)
    where = endpoint.base_url
    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError as exc:
        raise FatalAPIError(
            f"{where} refused the API key (401): check the key in ${endpoint.api_key_env}"
        ) from exc
    except openai.PermissionDeniedError as exc:
        raise FatalAPIError(
            f"{where} denied access (403) with the key in ${endpoint.api_key_env}"
        ) from exc
    except openai.NotFoundError as exc:
        raise FatalAPIError(
            f"{where} has no /models endpoint (404): is the base URL right? It usually ends in /v1"
        ) from exc
    except openai.APITimeoutError as exc:
        raise FatalAPIError(f"{where} did not answer within {endpoint.timeout_s:.0f}s") from exc
    except openai.APIConnectionError as exc:
        raise FatalAPIError(
            f"cannot reach {where} ({_cause(exc)}): is the server running and the URL right?"
        ) from exc
    except openai.APIStatusError as exc:
        raise FatalAPIError(f"{where} answered {exc.status_code} to GET /models") from exc
    except (json.JSONDecodeError, ValueError, openai.APIResponseValidationError) as exc:
        raise FatalAPIError(f"{where} is not an OpenAI-compatible API ({exc})") from exc
    if endpoint.model not in served and not answered_before:
        shown = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
        raise FatalAPIError(
            f"{where} does not serve model {endpoint.model!r}; it serves: {shown or 'nothing'}"
        )
    return served


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return type(inner).__name__ if inner else type(exc).__name__


@dataclass
class Reply:
    """One successful completion: the text, token logprobs and the server's usage."""

    content: str | None
    tokens: list[dict[str, Any]] | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str | None


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, else ``Retry-After`` as seconds
    or an HTTP date), capped; None when it does not say."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return min(max(float(raw_ms) / 1000.0, 0.0), RETRY_AFTER_CAP_S)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return min(max(float(raw), 0.0), RETRY_AFTER_CAP_S)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        return min(max(parsed.timestamp() - time.time(), 0.0), RETRY_AFTER_CAP_S)


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


Ledger = Callable[..., Any]


def complete(
    client: Any,
    endpoint: Endpoint,
    *,
    messages: list[dict[str, str]],
    response_format: dict[str, Any] | None,
    logprobs: int | None,
    max_tokens: int,
    temperature: float,
    seed: int,
    begin: Callable[[int], int],
    finish: Callable[..., None],
    cost: Callable[[int, int], float],
    rng: random.Random,
    sleep: Callable[[float], None] = time.sleep,
) -> Reply | None:
    """One completion with retries; every attempt is written to the ledger through ``begin``
    (before sending) and ``finish``. None when retries run out or the server rejects this text
    (400); :class:`FatalAPIError` when it rejects everything."""
    import openai

    params: dict[str, Any] = {
        "model": endpoint.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    if response_format is not None:
        params["response_format"] = response_format
    if logprobs:
        params["logprobs"] = True
        params["top_logprobs"] = logprobs
    for attempt in range(endpoint.max_retries + 1):
        request_id = begin(attempt)
        started = time.monotonic()
        wait: float | None = None
        try:
            raw = client.chat.completions.with_raw_response.create(**params)
            response = raw.parse()
            choice = response.choices[0]
            usage = response.usage
            if usage is None:
                raise ValueError("the reply carries no usage")
        except openai.RateLimitError as exc:
            wait = retry_after_s(exc.response.headers)
            finish(request_id, status="429", http_status=429, error=_short(exc))
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            finish(request_id, status="rejected", http_status=exc.status_code, error=_short(exc))
            raise FatalAPIError(
                f"{endpoint.base_url} refused the key ({exc.status_code}) mid-run; answers so "
                "far are kept"
            ) from exc
        except openai.NotFoundError as exc:
            finish(request_id, status="rejected", http_status=404, error=_short(exc))
            raise FatalAPIError(
                f"{endpoint.base_url}: model {endpoint.model!r} or the chat endpoint is gone "
                "(404); answers so far are kept"
            ) from exc
        except openai.APIStatusError as exc:
            if response_format is not None and "response_format" in str(exc):
                finish(
                    request_id, status="rejected", http_status=exc.status_code, error=_short(exc)
                )
                raise FormatRejected(_short(exc)) from exc
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                finish(request_id, status="5xx", http_status=exc.status_code, error=_short(exc))
            else:
                finish(
                    request_id, status="rejected", http_status=exc.status_code, error=_short(exc)
                )
                return None
        except openai.APITimeoutError as exc:
            finish(request_id, status="timeout", error=_short(exc))
        except openai.APIConnectionError as exc:
            finish(request_id, status="connection", error=_cause(exc))
        except (
            json.JSONDecodeError,
            ValueError,
            KeyError,
            IndexError,
            AttributeError,
            openai.APIResponseValidationError,
        ) as exc:
            finish(request_id, status="bad-response", error=_short(exc))
        else:
            latency = (time.monotonic() - started) * 1000.0
            pt, ct = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
            finish(
                request_id,
                status="ok",
                http_status=raw.http_response.status_code,
                prompt_tokens=pt,
                completion_tokens=ct,
                cost_usd=cost(pt, ct),
                latency_ms=latency,
            )
            tokens = None
            if choice.logprobs is not None and choice.logprobs.content is not None:
                tokens = [t.model_dump() for t in choice.logprobs.content]
            return Reply(choice.message.content, tokens, pt, ct, latency, choice.finish_reason)
        if attempt < endpoint.max_retries:
            sleep(wait if wait is not None else backoff_s(attempt, rng))
    return None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
