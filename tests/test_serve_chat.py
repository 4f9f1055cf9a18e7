"""The drop-in endpoint over a real socket, through the official ``openai`` client: an
application that calls an LLM for a label switches to smallfit by changing its base URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from smallfit.config import DataConfig
from smallfit.data import load_dataset
from smallfit.models import load
from smallfit.route import Cascade, Tier
from smallfit.serve.app import create_app
from smallfit.testing.http import serving

pytestmark = [pytest.mark.server]

SYSTEM = "Classify the user's request into one of the intents. Answer with the intent only."


@pytest.fixture(scope="module")
def served(snips_slice: Path, snips_minilm: Path, snips_linear: Path, tmp_path_factory):
    """(base URL of smallfit serving the cascade linear -> minilm, the cascade dir, test texts)."""
    root = tmp_path_factory.mktemp("chat")
    data = load_dataset(
        DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    )
    cascade = Cascade(
        [
            Tier(model=load(snips_linear), threshold=0.6, path=snips_linear),
            Tier(model=load(snips_minilm), threshold=None, path=Path(snips_minilm)),
        ]
    )
    cascade_dir = cascade.save(root / "cascade")
    texts = data.test.texts
    tier = load(cascade_dir).decide(texts).tier
    both = [t for t, i in zip(texts, tier, strict=True) if i == 0][:12]  # answered by linear
    both += [t for t, i in zip(texts, tier, strict=True) if i == 1][:12]  # escalated to MiniLM
    with serving(create_app(cascade_dir)) as url:
        yield url, cascade_dir, both


@pytest.fixture(scope="module")
def client(served) -> Iterator[openai.OpenAI]:
    """The official client, pointed at smallfit instead of an LLM API: only the base URL."""
    url = served[0]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0) as c:
        yield c


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def test_the_official_client_gets_the_cascades_labels(served, client) -> None:
    _, cascade_dir, texts = served
    offline = load(cascade_dir).decide(texts)
    model = load(cascade_dir)
    tiers = []
    for i, text in enumerate(texts):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=_messages(text)
        )
        reply = raw.parse()
        expected = model.labels[int(offline.probs[i].argmax())]
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
        assert reply.model == "cascade"
        assert reply.usage is not None
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 1  # one-word label
        assert reply.usage.prompt_tokens == len(SYSTEM.split()) + len(text.split())
        tier = raw.headers["x-smallfit-tier"]
        assert tier == ["linear", "s"][int(offline.tier[i])]
        assert float(raw.headers["x-smallfit-confidence"]) == pytest.approx(
            float(offline.probs[i].max()), abs=1e-5
        )
        tiers.append(tier)
    assert set(tiers) == {"linear", "s"}  # both tiers answered some
    assert [m.id for m in client.models.list()] == ["cascade"]


def test_answers_take_the_form_the_request_asks_for(served, client) -> None:
    _, cascade_dir, texts = served
    labels = load(cascade_dir).labels
    text = texts[0]
    plain = client.chat.completions.create(model="m", messages=_messages(text))
    label = plain.choices[0].message.content
    assert label in labels
    schema = {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": labels}},
        "required": ["intent"],
    }
    structured = client.chat.completions.create(
        model="m",
        messages=_messages(text),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "intent", "schema": schema, "strict": True},
        },
    )
    assert json.loads(structured.choices[0].message.content or "") == {"intent": label}
    as_object = client.chat.completions.create(
        model="m", messages=_messages(text), response_format={"type": "json_object"}
    )
    assert json.loads(as_object.choices[0].message.content or "") == {"label": label}
    parts = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": text}]}]
    )
    assert parts.choices[0].message.content == label
    # streamed: the role, the label, the stop, in OpenAI's chunks
    stream = client.chat.completions.create(model="m", messages=_messages(text), stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == label
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "messages": []}, "messages", "messages: List should have at least 1"),
        (
            {"model": "m", "messages": [{"role": "system", "content": "x"}]},
            "messages",
            "holds no user message",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": 3}]},
            "messages",
            "messages.0.content: Input should be a valid string",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": " "}]},
            "messages",
            "messages.0.content: String should match pattern",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x" * 2001}]},
            "messages",
            "at most 2000 characters",
        ),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}, *USER]}, "messages", "role"),
        ({"model": "m", "n": 2, "messages": USER}, "n", "n: Input should be 1"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream", "valid boolean"),
        (
            {"model": "m", "messages": USER, "response_format": {"type": "xml"}},
            "response_format",
            "'text', 'json_object', 'json_schema'",
        ),
        (
            {
                "model": "m",
                "messages": USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "properties": {}}},
                },
            },
            "response_format",
            "response_format.json_schema.schema.properties: Dictionary should have at least 1",
        ),
    ],
)
def test_a_request_smallfit_cannot_answer_gets_openais_error_shape(
    client, body: dict, param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    error = caught.value
    assert error.status_code == 400
    assert error.param == param and words in error.message
    assert error.type == "invalid_request_error"


def test_a_body_that_is_not_json_is_a_400_and_the_server_goes_on(served, client) -> None:
    url, _, texts = served
    with httpx.Client(base_url=url, timeout=30) as http:
        json_type = {"content-type": "application/json"}
        bad = http.post("/v1/chat/completions", content=b"{not json", headers=json_type)
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        listed = http.post("/v1/chat/completions", json=[1, 2])
        assert listed.status_code == 400
        assert listed.json()["error"]["message"].startswith("the body: Input should be a valid")
    reply = client.chat.completions.create(model="m", messages=_messages(texts[1]))
    assert reply.choices[0].message.content


def test_tei_predict_is_a_thin_adapter_over_the_same_answers(served) -> None:
    url, _, texts = served
    classified = httpx.post(f"{url}/v1/classify", json={"texts": texts[:4]}).json()["results"]
    one = httpx.post(f"{url}/predict", json={"inputs": texts[0]})
    assert one.status_code == 200
    scores = one.json()
    assert scores[0]["label"] == classified[0]["label"]
    assert [s["score"] for s in scores] == sorted(classified[0]["probs"].values(), reverse=True)
    batch = httpx.post(f"{url}/predict", json={"inputs": texts[:4], "truncate": True}).json()
    assert [b[0]["label"] for b in batch] == [c["label"] for c in classified]
    for bad in ({"inputs": " "}, {"inputs": []}, {"inputs": [["a", "b"]]}, {"texts": ["a"]}):
        assert httpx.post(f"{url}/predict", json=bad).status_code == 422, bad


def test_an_escalated_answer_is_read_from_the_upstreams_own_bytes() -> None:
    """The label in a relayed answer, whole or streamed; anything else is a failed tier."""
    from smallfit.llm.prompt import Prompt
    from smallfit.serve.upstream import Relayed, Upstream, UpstreamFailed, answer_text
    from smallfit.serve.upstream import relayed_probs as probs

    prompt = Prompt(template="{text}", labels=["a", "b"], answer_key="intent")
    up = Upstream("http://127.0.0.1:9/v1", "NONE", None, prompt)
    whole = json.dumps({"choices": [{"message": {"content": '{"intent": "b"}'}}]}).encode()
    chunks = [{"role": "assistant", "content": ""}, {"content": '{"intent"'}, {"content": ': "a"}'}]
    events = (
        "".join(f"data: {json.dumps({'choices': [{'delta': d}]})}\n\n" for d in chunks)
        + "data: [DONE]\n\n"
    )
    assert answer_text(whole) == '{"intent": "b"}'
    assert answer_text(events.encode()) == '{"intent": "a"}'
    assert answer_text(b"not json") is None
    assert probs(up, Relayed(200, {}, whole)).tolist() == [[0.0, 1.0]]
    assert probs(up, Relayed(200, {}, events.encode())).tolist() == [[1.0, 0.0]]
    with pytest.raises(UpstreamFailed, match="answered 429"):
        probs(up, Relayed(429, {}, whole))
    nothing = json.dumps({"choices": [{"message": {"content": "c"}}]}).encode()
    with pytest.raises(UpstreamFailed, match="names none of the task's labels"):
        probs(up, Relayed(200, {}, nothing))
