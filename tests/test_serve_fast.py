"""The hot path of ``POST /v1/classify``: it takes exactly the bodies the route's model takes, and
answers them as the FastAPI route does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from smallfit.serve.app import classify_request_model, create_app
from smallfit.serve.config import ServeConfig
from smallfit.serve.fast import FastClassify, plain_texts
from smallfit.testing.http import serving

CONFIG = ServeConfig(max_texts=3, max_text_chars=12)
BODIES = [
    b'{"texts": ["play jazz"]}',
    b'{"texts": ["play jazz", "book a table", "x"]}',
    b'{"texts": ["exactly 12 ch"]}',
    b'{"texts": ["thirteen chars"]}',  # 14: over the limit
    b'{"texts": ["a", "b", "c", "d"]}',  # 4 texts: too many
    b'{"texts": []}',
    b'{"texts": [""]}',
    b'{"texts": ["   "]}',
    b'{"texts": ["\\u0085\\ufeff"]}',  # whitespace to one regex engine or the other
    b'{"texts": ["caf\\u00e9 ok"]}',
    b'{"texts": ["\\ud800 lone"]}',  # a lone surrogate
    b'{"texts": ["\\ud83d\\ude00 ok"]}',  # a pair: valid
    b'{"texts": [1]}',
    b'{"texts": [null]}',
    b'{"texts": [["nested"]]}',
    b'{"texts": "play jazz"}',
    b'{"texts": ["ok"], "extra": 1}',
    b'{"text": ["ok"]}',
    b"[]",
    b'"texts"',
    b"not json",
    b'{"texts": ["caf\xe9"]}',  # not UTF-8
    b"",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_hot_path_takes_exactly_what_the_route_takes(body: bytes) -> None:
    model = classify_request_model(CONFIG)
    try:
        model.model_validate(json.loads(body))
        valid = True
    except (ValueError, ValidationError):
        valid = False
    assert (plain_texts(body, CONFIG) is not None) == valid


@pytest.mark.server
def test_the_hot_path_answers_as_the_route_does(snips_linear: Path) -> None:
    fast = create_app(snips_linear, ServeConfig(top_k=2))
    plain = create_app(snips_linear, ServeConfig(top_k=2))
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not FastClassify]
    requests = [["play some jazz"], ["book a table for two", "what's the weather"], ["x"] * 5]
    answers = {}
    for name, app in (("fast", fast), ("plain", plain)):
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            got = []
            for texts in requests:
                response = client.post("/v1/classify", json={"texts": texts})
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                body = response.json()
                assert body.pop("latency_ms") >= 0
                assert all(a.pop("latency_ms") >= 0 for a in body["results"])
                got.append(body)
            # a body only the route can judge goes on to it, whole: its 422 names the field
            refused = client.post("/v1/classify", json={"texts": ["ok", 7]})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["field"] == "texts.1"
            metrics = client.get("/metrics").text
            assert 'smallfit_requests_total{status="200"} 3.0' in metrics
            assert 'smallfit_requests_total{status="422"} 1.0' in metrics
            answers[name] = got
    assert answers["fast"] == answers["plain"]
