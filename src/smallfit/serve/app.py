"""The HTTP app: ``POST /v1/classify``, health and readiness, Prometheus metrics, admin routes
(hot swap, shadow) behind a bearer token; OpenAPI docs at ``/docs``."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from smallfit import __version__
from smallfit.errors import SmallfitError
from smallfit.models.base import read_manifest
from smallfit.run.store import NoModel, resolve_model_path
from smallfit.serve.chat import CHAT_PATH, add_chat_routes, validation_error
from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Engine, RequestFailed, Served
from smallfit.serve.errors import openai_error
from smallfit.serve.extract import EXTRACT_PATH, add_extract_routes
from smallfit.serve.fast import CLASSIFY_PATH, ASGIApp, FastClassify, Scope, classify_payload
from smallfit.serve.metrics import Metrics
from smallfit.serve.tei import PREDICT_PATH, add_tei_routes
from smallfit.serve.text import served_text
from smallfit.serve.upstream import UpstreamClient, pass_through

AdminCredentials = Annotated[
    HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))
]


class Peers(Protocol):
    """The other replicas of one service (``serve --engine ray``): a swap on one reaches them
    all, and ``/metrics`` on any of them reports the whole service."""

    def start(self, engine: Engine, metrics: Metrics) -> None:
        """Begin following the service's model and sharing this replica's metrics."""

    async def swap(self, engine: Engine, path: Path) -> Served:
        """Swap ``path`` in here, then have the other replicas follow (:class:`NotShared`
        when they cannot be told)."""

    async def exposition(self, own: bytes) -> bytes:
        """The service's metrics, this replica's (``own``) among them."""


class NotShared(SmallfitError):
    """A swap that took on this replica but could not reach the service's others."""


class Problem(BaseModel):
    """One thing wrong with a request."""

    field: str = Field(description="where, as a dotted path (`texts.3`: the fourth text)")
    message: str


class Problems(BaseModel):
    """A refused request (422): every problem found, each naming its field."""

    detail: list[Problem]


class ErrorDetail(BaseModel):
    """A request that could not be answered (401, 403, 413, 500, 503), and why."""

    detail: str


def classify_request_model(config: ServeConfig) -> type[BaseModel]:
    """The request body of ``/v1/classify`` with this server's limits in its schema, so the
    OpenAPI document states what is refused: 1..``max_texts`` texts, each valid Unicode with
    1..``max_text_chars`` characters and at least one that is not whitespace."""
    texts: Any = list[served_text(config.max_text_chars)]  # type: ignore[misc]
    return create_model(
        "ClassifyRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Texts to classify (one or more).",
        texts=(
            texts,
            Field(min_length=1, max_length=config.max_texts, description="one answer each"),
        ),
    )


class TextAnswer(BaseModel):
    label: str
    probs: dict[str, float] = Field(description="the top-k labels' probabilities")
    confidence: float
    tier: str = Field(description="the model that answered")
    tier_index: int
    abstained: bool = Field(description="the cascade declined to answer (out of scope)")
    fallback: bool = Field(description="a later tier failed or timed out; best local answer")
    latency_ms: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    results: list[TextAnswer]
    latency_ms: float


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a model directory (or a run's models/<name>) to serve")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(description="a model directory to shadow the live one; null: none")


class Ready(BaseModel):
    status: str
    model: str
    kind: str
    version: str
    tiers: list[str]
    shadow: str | None


class Loading(BaseModel):
    status: str


class Swapped(BaseModel):
    status: str
    model: str
    version: str


class Shadowing(BaseModel):
    status: str
    model: str | None


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or as they
    stream in (pure ASGI: no per-request overhead beyond a header check)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = (
            b'{"detail":"request body too large: at most %d bytes (serve.max_body_bytes)"}'
            % self.limit
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(
    model_path: str | Path, config: ServeConfig | None = None, *, peers: Peers | None = None
) -> FastAPI:
    """The app serving the model in ``model_path`` (a model directory, or a run directory: its
    cascade if it has one, else its selected model); ``peers``: the service's other replicas."""
    config = config or ServeConfig()
    path = resolve_model_path(model_path)
    metrics = Metrics(window=config.escalation_window)
    engine = Engine(config, metrics)
    upstream_http = UpstreamClient()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start(path)
        if peers is not None:
            peers.start(engine, metrics)
        watcher = None
        if config.watch:
            watcher = asyncio.get_running_loop().create_task(
                engine.watch(path, config.watch_interval_s)
            )
        yield
        if watcher is not None:
            watcher.cancel()
        await upstream_http.aclose()
        await engine.stop()

    app = FastAPI(
        title="smallfit",
        version=__version__,
        description="Classify texts with the model smallfit chose; a cascade escalates "
        "unsure texts to its bigger tiers.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics

    def admin(credentials: AdminCredentials) -> None:
        token = os.environ.get(config.admin_token_env)
        if not token:
            raise HTTPException(
                403, f"admin routes are disabled: set {config.admin_token_env} to a token"
            )
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "admin routes need 'Authorization: Bearer <token>'")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if request.url.path == CHAT_PATH:  # e.g. a body that is not UTF-8: OpenAI's shape
            metrics.requests.labels(status=str(exc.status_code)).inc()
            error = openai_error(exc.status_code, str(exc.detail))
            error.headers.update(exc.headers or {})
            return error
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path == CHAT_PATH:  # OpenAI's clients expect its 400 and error shape
            passed = await pass_through(engine, upstream_http, request)
            if passed is not None:  # not one the model answers: the upstream does, as before
                return passed
            metrics.requests.labels(status="400").inc()
            return validation_error(list(exc.errors()))
        if request.url.path in (CLASSIFY_PATH, PREDICT_PATH, EXTRACT_PATH):
            metrics.requests.labels(status="422").inc()
        problems = [_problem(e, config) for e in exc.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    classify_body = classify_request_model(config)

    async def classify(request: Any) -> Any:
        """Classify a batch of texts: label, top-k probabilities, which tier answered."""
        try:
            served, answers, elapsed = await engine.answer(request.texts)
        except RequestFailed as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        # built by hand, not re-validated against the response model (documentation only)
        return JSONResponse(classify_payload(served, answers, elapsed))

    classify.__annotations__["request"] = classify_body  # the per-server limits' schema
    app.post(
        CLASSIFY_PATH,
        response_model=ClassifyResponse,
        responses={**_REFUSED, 500: _error("the model failed on this request"), 503: _UNAVAILABLE},
    )(classify)

    task = read_manifest(path).get("task", "classify")  # the routes' schemas follow it
    add_chat_routes(
        app, engine, config, too_large=_REFUSED[413], http=upstream_http, task=str(task)
    )
    add_tei_routes(app, engine, config, refused=_REFUSED)
    add_extract_routes(app, engine, body=classify_body, refused=_REFUSED)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Loading}})
    async def readyz() -> Any:
        """A model is loaded and answering."""
        live = engine.live
        if live is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {
            "status": "ready",
            "model": live.name,
            "kind": live.model.kind,
            "version": live.version,
            "tiers": [t.model.name for t in live.cascade.tiers],
            "shadow": engine.shadow.name if engine.shadow else None,
        }

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition format (not JSON)."""
        text = metrics.render()
        if peers is not None:
            text = await peers.exposition(text)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/admin/swap",
        dependencies=[Depends(admin)],
        response_model=Swapped,
        responses={
            **_ADMIN,
            400: _error("the model could not be loaded; the live one stays"),
            404: _error("no model at that path; the live one stays"),
        },
    )
    async def swap(request: SwapRequest) -> Any:
        """Load a model beside the live one and switch to it atomically (no failed requests)."""
        try:
            where = resolve_model_path(request.path)
        except NoModel as exc:
            metrics.errors.labels(kind="swap").inc()
            return JSONResponse({"detail": f"swap refused, live model unchanged: {exc}"}, 404)
        try:
            new = await (engine.swap(where) if peers is None else peers.swap(engine, where))
        except NotShared as exc:
            metrics.errors.labels(kind="swap").inc()
            return JSONResponse({"detail": str(exc)}, 503)
        except (SmallfitError, OSError) as exc:
            metrics.errors.labels(kind="swap").inc()
            return JSONResponse({"detail": f"swap failed, live model unchanged: {exc}"}, 400)
        return {"status": "swapped", "model": new.name, "version": new.version}

    @app.post(
        "/admin/shadow",
        dependencies=[Depends(admin)],
        response_model=Shadowing,
        responses={
            **_ADMIN,
            400: _error("the model could not be loaded; no change"),
            404: _error("no model at that path; no change"),
            409: _error("several workers or replicas: give the shadow when the server starts"),
        },
    )
    async def shadow(request: ShadowRequest) -> Any:
        """Run a candidate beside the live model on live traffic; agreement in /metrics."""
        if peers is not None:  # this request reaches one of them
            message = (
                "shadow not set: this server runs several workers or replicas and this request "
                "reaches one of them; give the shadow when the server starts (--shadow)"
            )
            return JSONResponse({"detail": message}, 409)
        try:
            where = None if request.path is None else resolve_model_path(request.path)
        except NoModel as exc:
            return JSONResponse({"detail": f"shadow not set: {exc}"}, 404)
        try:
            new = await engine.set_shadow(where)
        except (SmallfitError, OSError) as exc:
            return JSONResponse({"detail": f"shadow not set: {exc}"}, 400)
        return {"status": "shadowing" if new else "no shadow", "model": new.name if new else None}

    app.add_middleware(FastClassify, engine=engine, config=config)  # inside the body limit
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app


def _problem(error: Any, config: ServeConfig) -> dict[str, str]:
    """One validation error as ``{field, message}``, in words a client can act on."""
    loc = [p for p in error["loc"] if p != "body"]
    field = ".".join(str(p) for p in loc)
    kind, message = error["type"], error["msg"]
    if loc[:1] == ["texts"] and len(loc) == 2 and isinstance(loc[1], int):
        i, given = loc[1], error.get("input")
        if kind == "string_too_long" and isinstance(given, str):
            message = (
                f"text {i} has {len(given)} characters; at most {config.max_text_chars} "
                "(serve.max_text_chars)"
            )
        elif kind in ("string_too_short", "string_pattern_mismatch"):
            message = f"text {i} is empty or only whitespace: there is nothing to classify"
        elif kind == "string_unicode" or (kind == "value_error" and "Unicode" in message):
            message = f"text {i} is not valid Unicode (a lone surrogate); send UTF-8 text"
    elif loc == ["texts"] and kind == "too_long":
        given = error.get("input")
        count = len(given) if isinstance(given, list) else "too many"
        message = f"{count} texts in one request; at most {config.max_texts} (serve.max_texts)"
    elif loc == ["texts"] and kind == "too_short":
        message = "no texts: send at least one"
    return {"field": field, "message": message}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


_REFUSED: dict[int | str, dict[str, Any]] = {
    400: _error("the body could not be parsed (not UTF-8 JSON)"),
    413: _error("the request body is over serve.max_body_bytes"),
    422: {"model": Problems, "description": "the request is invalid; each problem named"},
}
_UNAVAILABLE = _error("a remote tier failed or timed out and serve.fallback is 'error'")
_ADMIN: dict[int | str, dict[str, Any]] = {
    **_REFUSED,
    401: _error("missing or wrong bearer token"),
    403: _error("admin routes are disabled: the token's environment variable is not set"),
}
