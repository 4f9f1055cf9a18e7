"""The drop-in endpoint: OpenAI's ``POST /v1/chat/completions`` and ``GET /v1/models``, answered
by the served model (or cascade), so an application that calls an LLM for a label switches by
changing its base URL.

The text classified is cut out of the request with the task's template, when the cascade's
last tier is the upstream a task from captured traffic names (see :mod:`smallfit.serve.upstream`):
a request that does not follow the template goes straight to that upstream, counted in
``/metrics``. A request the cascade escalates is sent to that upstream as the application sent
it, byte for byte, with the server's key, and the application gets the upstream's own answer
(a streamed one once it is complete); its label, read with the teacher's prompt, is the last
tier's answer in the metrics and the escalation log. An upstream that fails, answers other than
200 or names no label is a failed remote tier: ``serve.fallback`` decides (the best local
answer, flagged, or 503), except that a 200 the application could use is still relayed to it.
A model trained from a plain data file has no template: the text is then the last
user message. The answer takes the form the request asks for: the bare
label as the message content; ``{"label": ...}`` for ``response_format`` ``json_object``; for a
``json_schema``, an object of the schema's one property (a string; its enum, when given, should
list the labels) holding the label. ``stream: true`` answers as server-sent events in OpenAI's
chunk shape. Every answer carries ``x-smallfit-tier`` and ``x-smallfit-confidence``.

The request schema in the OpenAPI document is exactly what is accepted (other OpenAI parameters,
such as ``temperature``, are accepted and ignored); anything else gets OpenAI's error JSON with
status 400 and the offending ``param``, never a 500.

``usage`` is filled so that clients reading it work; a local model bills nothing, so it counts
whitespace-separated words of the messages and of the answer, not a tokenizer's tokens.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import JsonDict

from smallfit.llm.template import content_text
from smallfit.route.cascade import Raw
from smallfit.serve.config import ServeConfig
from smallfit.serve.engine import Answer, Engine, RequestFailed
from smallfit.serve.errors import openai_error
from smallfit.serve.extract import extract_texts
from smallfit.serve.text import served_text
from smallfit.serve.upstream import (
    Relayed,
    UpstreamClient,
    forward,
    relay,
    relayed_probs,
    upstream_of,
)

CHAT_PATH = "/v1/chat/completions"

_OPEN = ConfigDict(extra="allow", strict=True)  # OpenAI's other fields: accepted, ignored
_CLOSED = ConfigDict(extra="forbid", strict=True)


class _FormatText(BaseModel):
    model_config = _OPEN
    type: Literal["text"]


class _FormatJsonObject(BaseModel):
    model_config = _OPEN
    type: Literal["json_object"]


class _StringProperty(BaseModel):
    model_config = _OPEN
    type: Literal["string"]


class _Property(BaseModel):
    model_config = _OPEN


JsonSchemaType = Literal["json_schema"]


def response_format_model(task: str) -> Any:
    """``response_format`` as the served task answers it: text, ``json_object``, or a
    ``json_schema`` that is, for a classifier, an object of one string property (the label),
    and for an extractor, an object of its fields."""
    one = task != "extract"
    schema = create_model(
        "LabelSchema" if one else "FieldsSchema",
        __config__=_OPEN,
        __doc__="The answer's JSON schema.",
        properties=(
            dict[str, _StringProperty] if one else dict[str, _Property],
            Field(min_length=1, max_length=1 if one else None),
        ),
    )
    spec = create_model(
        "JsonSchemaSpec",
        __config__=ConfigDict(extra="allow", strict=True, populate_by_name=True),
        name=(str, ...),
        schema_=(schema, Field(alias="schema")),
    )
    fmt = create_model(
        "FormatJsonSchema",
        __config__=_OPEN,
        type=(JsonSchemaType, ...),
        json_schema=(spec, ...),
    )
    return Annotated[_FormatText | _FormatJsonObject | fmt, Field(discriminator="type")]


Role = Literal["system", "developer", "user", "assistant"]
TextType = Literal["text"]


class ChatError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ChatErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ChatError


class _Message(BaseModel):
    role: Literal["assistant"]
    content: str


class _Choice(BaseModel):
    index: int
    message: _Message
    finish_reason: Literal["stop"]
    logprobs: None


class _Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's chat completion: the label (or JSON) as the assistant's message."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage


class _Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[_Model]


def chat_request_model(config: ServeConfig, task: str = "classify") -> type[BaseModel]:
    """The request body of ``/v1/chat/completions`` with this server's limits in its schema:
    at least one user message; every message's text valid Unicode with 1..``max_text_chars``
    characters, at least one not whitespace (as a string, or as text parts)."""
    text = served_text(config.max_text_chars)
    part = create_model("TextPart", __config__=_CLOSED, type=(TextType, ...), text=(text, ...))
    content: Any = text | Annotated[list[part], Field(min_length=1)]
    message = create_model(
        "ChatMessage",
        __config__=_OPEN,
        role=(Role, ...),
        content=(content, ...),
    )

    def one_user(messages: list[Any]) -> list[Any]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("holds no user message to answer")
        return messages

    a_user: JsonDict = {"properties": {"role": {"const": "user"}}, "required": ["role"]}
    messages: Any = Annotated[
        list[message],
        Field(min_length=1, json_schema_extra={"contains": a_user}),
        AfterValidator(one_user),
    ]
    return create_model(
        "ChatRequest",
        __config__=_OPEN,
        __doc__="An OpenAI chat completion request; the last user message is classified.",
        model=(str, Field(description="any name: the served model answers")),
        messages=(messages, ...),
        n=(Literal[1], Field(1, description="one answer per request")),
        stream=(bool, False),
        response_format=(response_format_model(task) | None, None),
    )


def _message_text(message: Any) -> str:
    """A message's text: its content, or its text parts joined (as captured traffic is read:
    :func:`smallfit.llm.template.content_text`)."""
    return content_text(message.model_dump(mode="json")["content"]) or ""


def last_user_text(request: Any) -> str:
    """The text to classify: the last user message."""
    return _message_text(next(m for m in reversed(request.messages) if m.role == "user"))


def answer_content(label: str, response_format: Any) -> str:
    """The message content in the form the request asks for."""
    if response_format is None or response_format.type == "text":
        return label
    if response_format.type == "json_object":
        # a schema given beside it (llama.cpp's servers take one) names the key, if it has one
        schema = (response_format.model_extra or {}).get("schema")
        props = schema.get("properties") if isinstance(schema, dict) else None
        key = next(iter(props)) if isinstance(props, dict) and len(props) == 1 else "label"
        return json.dumps({key: label}, ensure_ascii=False)
    (key,) = response_format.json_schema.schema_.properties
    return json.dumps({key: label}, ensure_ascii=False)


def label_schema_problem(response_format: Any) -> str | None:
    """Why a classifier cannot answer in ``response_format``: a JSON schema that is not one
    string property; None when it can."""
    if response_format is None or response_format.type != "json_schema":
        return None
    props = response_format.json_schema.schema_.properties
    kinds = [getattr(p, "type", None) or (p.model_extra or {}).get("type") for p in props.values()]
    if len(props) != 1 or kinds != ["string"]:
        return (
            "response_format.json_schema: a classifier answers a schema of one string property "
            f"(the label); this one has {len(props)} properties"
        )
    return None


def validation_error(errors: list[Any]) -> JSONResponse:
    """A refused chat request as OpenAI's 400: the first problem, with its field's path in the
    message and its top-level field as ``param``."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where: list[str] = []
    for part in (str(p) for p in first.get("loc", ()) if p != "body"):
        # pydantic's union branches (`function-after[...]`, `list[TextPart]`) and a tagged
        # union's tag repeated before its field are not the user's field names
        if not re.search(r"[\[(]", part) and (not where or where[-1] != part):
            where.append(part)
    param = where[0] if where else None
    return openai_error(400, f"{'.'.join(where) or 'the body'}: {first.get('msg')}", param=param)


def _words(text: str) -> int:
    return len(text.split())


def _completion(model: str, content: str, request: Any) -> dict[str, Any]:
    prompt = sum(_words(_message_text(m)) for m in request.messages)
    completion = _words(content)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


async def _stream(model: str, content: str) -> AsyncIterator[bytes]:
    """The answer as OpenAI's streamed chunks: the role, the content, the stop, ``[DONE]``."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}, None)
    yield chunk({"content": content}, None)
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


async def _extract_answer(engine: Engine, text: str, request: Any) -> Response:
    """An extractor's answer to a chat request: the fields as the message's JSON content."""
    try:
        served, answers, _ = await extract_texts(engine, [text])
    except RequestFailed as exc:
        return openai_error(exc.status, str(exc), kind="server_error")
    answer = answers[0]
    fields = served.model.schema.render(answer.values)  # type: ignore[attr-defined]
    content = json.dumps(fields, ensure_ascii=False)
    tier = answer.tier or served.name  # a cascade's answering tier
    headers = {"x-smallfit-tier": tier, "x-smallfit-confidence": f"{answer.confidence:.6f}"}
    if request.stream:
        events = _stream(served.name, content)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return JSONResponse(_completion(served.name, content, request), headers=headers)


def _headers(answer: Answer) -> dict[str, str]:
    headers = {"x-smallfit-tier": answer.tier, "x-smallfit-confidence": f"{answer.confidence:.6f}"}
    if answer.fallback:  # a later tier failed or timed out: the best local answer stands
        headers["x-smallfit-fallback"] = "true"
    return headers


_SSE_EVENT = {
    "type": "object",
    "description": "one server-sent event: its data a chat.completion.chunk as JSON, then [DONE]",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _refusal(description: str) -> dict[str, Any]:
    return {"model": ChatErrorBody, "description": description}


def add_chat_routes(
    app: FastAPI,
    engine: Engine,
    config: ServeConfig,
    *,
    too_large: Any,
    http: UpstreamClient,
    task: str = "classify",
) -> None:
    """Add ``POST /v1/chat/completions`` and ``GET /v1/models`` to ``app`` (``too_large``: the
    documented 413 of the body limit, which answers before any route; ``http``: the client that
    passes requests outside the task's template to the upstream; ``task``: the served model's,
    which decides the ``json_schema`` answers it takes)."""

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> Any:
        """The served model, in OpenAI's model list shape."""
        live = engine.live
        data = []
        if live is not None:
            created = int(live.loaded_at)
            data.append(
                {"id": live.name, "object": "model", "created": created, "owned_by": "smallfit"}
            )
        return {"object": "list", "data": data}

    async def chat_completions(request: Any, raw: Request) -> Response:
        """Answer an OpenAI chat completion request with the served model's label (or JSON)."""
        live = engine.live
        upstream = upstream_of(live.cascade) if live is not None else None
        text = last_user_text(request)
        if live is not None and live.task == "extract":  # the fields, as a JSON object
            return await _extract_answer(engine, text, request)
        problem = label_schema_problem(request.response_format)
        if problem is not None:
            engine.metrics.requests.labels(status="400").inc()
            return openai_error(400, problem, param="response_format")
        relayed: list[Relayed] = []
        escalate = None
        if upstream is not None and upstream.template is not None:
            body = request.model_dump(by_alias=True, exclude_unset=True)
            cut = upstream.template.cut(body)
            if cut is None:  # not the task's request: the upstream answers it, as it always did
                engine.metrics.passthrough.labels(reason="template").inc()
                return await forward(http.get(), upstream, body, stream=request.stream)
            text = cut
            bytes_in, to = await raw.body(), upstream

            async def escalate(texts: list[str]) -> Raw:
                reply = await relay(http.get(), to, bytes_in)
                relayed.append(reply)
                return relayed_probs(to, reply)

        try:
            served, answers, _ = await engine.answer([text], last=escalate)
        except RequestFailed as exc:
            if relayed and relayed[0].status == 200:  # the upstream's answer, though no label
                return relayed[0].response({"x-smallfit-tier": "upstream"})
            return openai_error(exc.status, str(exc), kind="server_error")
        answer = answers[0]
        if relayed and relayed[0].status == 200:  # the upstream's own answer, byte for byte
            named = answer.fallback  # it named no label: a local answer stands in the metrics
            return relayed[0].response(
                {"x-smallfit-tier": "upstream"} if named else _headers(answer)
            )
        content = answer_content(answer.label, request.response_format)
        headers = _headers(answer)
        if request.stream:
            events = _stream(served.name, content)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(_completion(served.name, content, request), headers=headers)

    chat_completions.__annotations__["request"] = chat_request_model(config, task)
    app.post(
        CHAT_PATH,
        response_model=ChatCompletion,
        responses={
            200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            400: _refusal("the request is not one smallfit can answer; `param` names the field"),
            413: too_large,
            500: _refusal("the model failed on this request"),
            503: _refusal("a remote tier failed or timed out and serve.fallback is 'error'"),
        },
    )(chat_completions)
