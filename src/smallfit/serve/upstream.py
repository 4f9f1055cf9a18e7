"""The application's upstream, as the served cascade knows it: when its last tier is the LLM
the team calls today (a teacher built from captured traffic), its endpoint, the task's
template and the teacher's prompt (which reads a label out of an answer). The chat route cuts
the text out of a request with the template; a request that does not follow it goes straight
to the upstream, and a request the cascade escalates is sent there as the application sent
it, byte for byte. Both go with the server's own key (never the client's), and the
upstream's answer comes back unchanged."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from fastapi.responses import Response, StreamingResponse

from smallfit.errors import SmallfitError
from smallfit.llm.answers import one_hot_row
from smallfit.llm.headers import HOP_BY_HOP
from smallfit.llm.template import Template
from smallfit.serve.errors import openai_error


@dataclass(frozen=True)
class Upstream:
    """Where the upstream is, the variable its key is in, the task's template (None: the
    teacher's prompt is not a captured template) and the teacher's prompt."""

    base_url: str
    api_key_env: str
    template: Template | None
    prompt: Any = None


class UpstreamFailed(SmallfitError):
    """An escalated request the upstream did not answer with a label: unreachable, a status
    other than 200, or an answer that names none of the task's labels."""


@dataclass(frozen=True)
class Relayed:
    """The upstream's whole answer to a request relayed to it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def response(self, extra: dict[str, str]) -> Response:
        """The answer as the application gets it: status and body unchanged."""
        return Response(self.body, status_code=self.status, headers={**self.headers, **extra})


class UpstreamClient:
    """One HTTP client for the upstream, opened on first use and closed with the app."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def upstream_of(cascade: Any) -> Upstream | None:
    """The upstream behind ``cascade``'s last tier, if that tier is an LLM client."""
    tiers = getattr(cascade, "tiers", None) or []
    model = tiers[-1].model if tiers else cascade
    endpoint, prompt = getattr(model, "endpoint", None), getattr(model, "prompt", None)
    if endpoint is None or prompt is None:
        return None
    template = _template(endpoint.model, prompt)
    return Upstream(endpoint.base_url, endpoint.api_key_env, template, prompt)


def _template(model: str, prompt: Any) -> Template | None:
    """The captured template a teacher prompt reproduces: its context, the user message around
    ``{text}`` and the application's response format; None for smallfit's own prompts."""
    if not prompt.context and prompt.response_format_given is None:
        return None
    if "{labels}" in prompt.template or prompt.examples:
        return None
    head, _, tail = prompt.template.partition("{text}")

    def unescape(s: str) -> str:
        return s.replace("{{", "{").replace("}}", "}")

    return Template(
        model=model,
        context=[dict(m) for m in prompt.context],
        prefix=unescape(head),
        suffix=unescape(tail),
        response_format=prompt.response_format_given,
    )


async def pass_through(engine: Any, http: UpstreamClient, request: Any) -> Response | None:
    """A chat request the drop-in route cannot take (tools, images, ``n > 1`` ...), sent to the
    upstream when the live cascade has one and a task template; None otherwise (the route then
    refuses it with 400). Counted in ``/metrics`` as ``reason="schema"``."""
    live = engine.live
    upstream = upstream_of(live.cascade) if live is not None else None
    if upstream is None or upstream.template is None:
        return None
    try:
        body = await request.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    engine.metrics.passthrough.labels(reason="schema").inc()
    return await forward(http.get(), upstream, body, stream=body.get("stream") is True)


def _key_header(upstream: Upstream) -> dict[str, str]:
    key = os.environ.get(upstream.api_key_env, "")
    return {"authorization": f"Bearer {key}"} if key else {}


async def relay(client: httpx.AsyncClient, upstream: Upstream, raw: bytes) -> Relayed:
    """The request body ``raw`` sent to the upstream as it came, with the server's key, and
    its whole answer read (a streamed one too: a label is a few tokens). Unreachable: an
    :class:`UpstreamFailed`."""
    headers = {**_key_header(upstream), "content-type": "application/json"}
    try:
        reply = await client.post(
            upstream.base_url + "/chat/completions", content=raw, headers=headers
        )
    except httpx.HTTPError as exc:
        raise UpstreamFailed(f"the upstream cannot be reached ({exc!r})") from exc
    back = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
    return Relayed(reply.status_code, back, reply.content)


def answer_text(body: bytes) -> str | None:
    """The assistant's content in an upstream's answer: a chat completion's first choice, or
    the ``delta`` contents of a server-sent event stream joined; None when there is none."""
    text = body.decode("utf-8", errors="replace")
    if not text.lstrip().startswith("{"):
        pieces = []
        for line in text.splitlines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if not data or data == "[DONE]":
                continue
            delta = _choice(_loads(data)).get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                pieces.append(content)
        return "".join(pieces) if pieces else None
    message = _choice(_loads(text)).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _choice(obj: Any) -> dict[str, Any]:
    choices = obj.get("choices") if isinstance(obj, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}


def relayed_probs(upstream: Upstream, relayed: Relayed) -> np.ndarray:
    """The label the upstream gave, read with the teacher's prompt, as a one-hot row over the
    prompt's labels (the last tier's); an :class:`UpstreamFailed` when it gave none."""
    if relayed.status != 200:
        raise UpstreamFailed(f"the upstream answered {relayed.status}")
    label = upstream.prompt.parse(answer_text(relayed.body))
    if label is None:
        raise UpstreamFailed("the upstream's answer names none of the task's labels")
    return one_hot_row(label, upstream.prompt.labels)[None, :].astype(np.float32)


async def forward(
    client: httpx.AsyncClient, upstream: Upstream, body: dict[str, Any], *, stream: bool
) -> Response:
    """``body`` sent to the upstream with the server's key; its answer, status and body
    unchanged, marked ``x-smallfit-tier: upstream``."""
    request = client.build_request(
        "POST", upstream.base_url + "/chat/completions", json=body, headers=_key_header(upstream)
    )
    try:
        reply = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        message = f"the upstream cannot be reached ({exc!r})"
        return openai_error(502, message, kind="server_error")
    back = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
    back["x-smallfit-tier"] = "upstream"
    if not stream:
        return Response(reply.content, status_code=reply.status_code, headers=back)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in reply.aiter_bytes():  # decoded: content-encoding is not passed
                yield chunk
        finally:
            await reply.aclose()

    return StreamingResponse(relay(), status_code=reply.status_code, headers=back)
