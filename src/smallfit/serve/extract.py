"""``POST /v1/extract``: an extract task's fields for each text, from the served extractor.

``{"texts": [...]}`` answers, per text, its ``fields`` (the JSON object the schema describes:
a list field as a list, a string field as its first value), the ``spans`` they were read from,
each field's confidence and the document's. A classifier served here answers 409, as does
``/v1/classify`` on an extractor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from smallfit.serve.engine import Engine, RequestFailed, Served

EXTRACT_PATH = "/v1/extract"


class SpanOut(BaseModel):
    start: int
    end: int
    field: str


class FieldsAnswer(BaseModel):
    fields: dict[str, str | list[str]] = Field(description="the answer, as the schema says")
    spans: list[SpanOut] = Field(description="where in the text each value is")
    field_confidence: dict[str, float]
    confidence: float = Field(description="the document's: its lowest token's")
    tier: str


class ExtractResponse(BaseModel):
    model: str
    version: str
    results: list[FieldsAnswer]
    latency_ms: float


async def extract_texts(engine: Engine, texts: list[str]) -> tuple[Served, list[Any], float]:
    """The served extractor's answers (``Extraction``) for one request of a route, counted in
    the request metrics; also the seconds it took. A failure is a :class:`RequestFailed` (409
    when the served model classifies)."""
    served, metrics = engine.live, engine.metrics
    if served is None or served.task != "extract":
        metrics.requests.labels(status="503" if served is None else "409").inc()
        if served is None:
            raise RequestFailed(503, "no model loaded yet")
        raise RequestFailed(409, f"{served.name} classifies; POST /v1/classify")
    started = time.perf_counter()
    served.inflight += 1
    try:
        answers: Any = await served.batchers[0].submit(texts)  # the extractor's list
    except Exception as exc:
        raise engine.model_failed(exc) from exc
    finally:
        served.inflight -= 1
    elapsed = engine.answered(started)
    answers = list(answers)
    fields_answered(engine, served, texts, answers, elapsed)
    return served, answers, elapsed


def render(answer: Any, schema: Any, tier: str) -> dict[str, Any]:
    """One ``Extraction`` as the route's JSON."""
    spans = [{"start": s.start, "end": s.end, "field": s.field} for s in answer.spans]
    return {**answer.as_json(schema, tier), "spans": spans}


def add_extract_routes(app: FastAPI, engine: Engine, *, body: Any, refused: Any) -> None:
    """Add ``POST /v1/extract`` to ``app`` (``body``: the request model of ``/v1/classify``,
    with this server's limits; ``refused``: the documented error responses)."""

    async def extract(request: Any) -> Any:
        """The fields of each text, their spans and confidences."""
        try:
            served, answers, elapsed = await extract_texts(engine, list(request.texts))
        except RequestFailed as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        schema = served.model.schema  # type: ignore[attr-defined]
        return JSONResponse(
            {
                "model": served.name,
                "version": served.version,
                "results": [render(a, schema, a.tier or served.name) for a in answers],
                "latency_ms": round(elapsed * 1000, 3),
            }
        )

    extract.__annotations__["request"] = body
    failed = {"model": _Detail, "description": "the model failed on this request"}
    wrong = {"model": _Detail, "description": "the served model classifies: POST /v1/classify"}
    app.post(
        EXTRACT_PATH,
        response_model=ExtractResponse,
        responses={**refused, 409: wrong, 500: failed},
    )(extract)


class _Detail(BaseModel):
    detail: str


def fields_answered(
    engine: Engine, served: Served, texts: list[str], answers: list[Any], seconds: float
) -> None:
    """An extractor's answers to one request, counted as a cascade's are: texts per tier,
    escalations (a field cascade's second tier), the traffic log, and the shadow's
    agreement (every field equal)."""
    first = served.name
    tiers = getattr(served.model, "tiers", None)
    if tiers:
        first = tiers[0].name
    rows = []
    for a in answers:
        tier = a.tier or served.name
        index = 0 if tier in (first, served.name) else 1
        engine.metrics.texts.labels(tier=tier).inc()
        if index:
            engine.metrics.escalations.labels(tier=first).inc()
        engine.metrics.answered(index)
        rows.append((tier, index, a.confidence))
    if engine.config.traffic_log is not None:
        now, each_ms = round(time.time(), 3), 1000 * seconds / max(len(answers), 1)
        lines = "".join(
            json.dumps(
                {
                    "time": now,
                    "model": served.name,
                    "tier": tier,
                    "tier_index": index,
                    "tiers": len(tiers) if tiers else 1,
                    "confidence": round(float(confidence), 6),
                    "latency_ms": round(each_ms, 3),
                    "fallback": False,
                    "abstained": False,
                }
            )
            + "\n"
            for tier, index, confidence in rows
        )
        engine.append_line(Path(engine.config.traffic_log), lines)
    shadow = engine.shadow
    if shadow is not None and shadow.task == "extract":
        engine.spawn(_compare_fields(engine, shadow, texts, [a.values for a in answers]))


async def _compare_fields(
    engine: Engine, shadow: Served, texts: list[str], live: list[Any]
) -> None:
    shadow.inflight += 1
    try:
        answers: Any = await shadow.batchers[0].submit(texts)  # the extractor's list
    except Exception:
        engine.metrics.errors.labels(kind="shadow").inc()
        return
    finally:
        shadow.inflight -= 1
    agreed = sum(a.values == b for a, b in zip(answers, live, strict=True))
    engine.metrics.shadow(len(texts), agreed)
