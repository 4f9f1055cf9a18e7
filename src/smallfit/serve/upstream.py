"""The application's upstream, as the served cascade knows it: when its last tier is the LLM
the team calls today (a teacher built from captured traffic), its endpoint and the task's
template. The chat route cuts the text out of a request with the template; a request that
does not follow it goes straight to the upstream, with the server's own key (never the
client's), and its answer comes back unchanged."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse

from smallfit.llm.template import Template
from smallfit.serve.errors import openai_error

_HOP = {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding"}


@dataclass(frozen=True)
class Upstream:
    """Where the upstream is, the variable its key is in, and the task's template (None: the
    teacher's prompt is not a captured template)."""

    base_url: str
    api_key_env: str
    template: Template | None


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
    return Upstream(endpoint.base_url, endpoint.api_key_env, _template(endpoint.model, prompt))


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


async def forward(
    client: httpx.AsyncClient, upstream: Upstream, body: dict[str, Any], *, stream: bool
) -> Response:
    """``body`` sent to the upstream with the server's key; its answer, status and body
    unchanged, marked ``x-smallfit-tier: upstream``."""
    key = os.environ.get(upstream.api_key_env, "")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    request = client.build_request(
        "POST", upstream.base_url + "/chat/completions", json=body, headers=headers
    )
    try:
        reply = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        message = f"the upstream cannot be reached ({exc!r})"
        return openai_error(502, message, kind="server_error")
    back = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP}
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
