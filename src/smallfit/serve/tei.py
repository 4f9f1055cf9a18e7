"""Hugging Face TEI's ``POST /predict``: a thin adapter over the same engine as
``/v1/classify``, for clients written against a text-embeddings-inference classifier.

``{"inputs": "text"}`` answers ``[{"label", "score"}, ...]``; ``{"inputs": ["a", "b"]}`` answers
one such list per text. The scores are the served model's top-k probabilities (``serve.top_k``),
highest first. ``raw_scores`` and ``truncate`` are accepted: scores are always probabilities and
a text over ``max_text_chars`` is refused (422), never cut. Text pairs are not supported.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Answer, Engine, RequestFailed
from smallfit.serve.text import served_text

PREDICT_PATH = "/predict"


class Prediction(BaseModel):
    label: str
    score: float


class TeiError(BaseModel):
    """TEI's error body."""

    error: str
    error_type: str


def predict_request_model(config: ServeConfig) -> type[BaseModel]:
    """TEI's request body, with this server's limits in its schema."""
    text = served_text(config.max_text_chars)
    many = Annotated[list[text], Field(min_length=1, max_length=config.max_texts)]  # type: ignore[valid-type]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__="TEI's predict request: one text, or a batch of texts.",
        inputs=(text | many, Field(description="a text, or a list of texts")),
        raw_scores=(bool, Field(False, description="accepted; scores are probabilities")),
        truncate=(bool, Field(False, description="accepted; over-long texts are refused")),
    )


def _scores(answer: Answer) -> list[dict[str, Any]]:
    ranked = sorted(answer.probs.items(), key=lambda kv: -kv[1])
    return [{"label": label, "score": score} for label, score in ranked]


def add_tei_routes(app: FastAPI, engine: Engine, config: ServeConfig, *, refused: Any) -> None:
    """Add ``POST /predict`` to ``app`` (``refused``: the documented error responses)."""

    async def predict(request: Any) -> Any:
        """Classify one text or a batch, in TEI's shape."""
        single = isinstance(request.inputs, str)
        texts = [request.inputs] if single else list(request.inputs)
        try:
            _, answers, _ = await engine.answer(texts)
        except RequestFailed as exc:
            return JSONResponse(
                {"error": str(exc), "error_type": "Backend"}, status_code=exc.status
            )
        scored = [_scores(a) for a in answers]
        return JSONResponse(scored[0] if single else scored)

    predict.__annotations__["request"] = predict_request_model(config)
    failed = {"model": TeiError, "description": "the model failed, or a remote tier is down"}
    app.post(
        PREDICT_PATH,
        response_model=list[Prediction] | list[list[Prediction]],
        responses={**refused, 500: failed, 503: failed},
    )(predict)
