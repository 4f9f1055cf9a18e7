"""HTTP headers that belong to one connection, not to a request or an answer: a proxy in
front of an LLM (``smallfit capture``, the server's relay of escalated requests) never
forwards them either way. The body travels uncompressed, so content-encoding goes with
accept-encoding."""

from __future__ import annotations

HOP_BY_HOP = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
        "content-encoding",
        "expect",
    }
)
"""Lower-case names."""
HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
"""The same, as ASGI spells header names."""
