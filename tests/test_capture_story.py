"""The product's main story end to end, against real servers on 127.0.0.1 and through the
official ``openai`` client: the application's traffic through ``smallfit capture`` in front of
llama.cpp's server, a task and ``fit`` from that capture alone (no gold), then the same client
against ``smallfit serve`` with only its base URL changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import API_KEY

from smallfit.capture import CaptureConfig, CaptureStore, create_capture_app
from smallfit.capture.task import build_task
from smallfit.config import load_fit_config
from smallfit.errors import DataError
from smallfit.pipeline import fit
from smallfit.report import write_report
from smallfit.serve.app import create_app
from smallfit.serve.config import ServeConfig
from smallfit.testing.fault_proxy import FaultProxy
from smallfit.testing.http import serving

pytestmark = [pytest.mark.server, pytest.mark.slow]

INTENTS = [
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
]
SYSTEM = "You sort voice-assistant requests. Answer with the intent of the request."
FORMAT = {  # the form llama-cpp-python's server takes a JSON schema in
    "type": "json_object",
    "schema": {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": INTENTS}},
        "required": ["intent"],
    },
}


def _ask(client: openai.OpenAI, text: str, **extra: object) -> object:
    return client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        model="smollm2",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Request: {text}\nIntent?"},
        ],
        response_format=FORMAT,
        max_tokens=24,
        temperature=0,
        seed=0,
        **extra,
    )


def test_capture_then_fit_then_serve_with_only_the_base_url_changed(
    llama_url: str, snips_slice: Path, llm_env: str, tmp_path: Path, openai_client: Any
) -> None:
    lines = (snips_slice / "test.jsonl").read_text("utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    with FaultProxy(llama_url, rate=0.0) as upstream:  # logs what reaches llama.cpp
        # 1. the application's traffic, recorded
        store = CaptureStore(tmp_path / "capture.sqlite")
        app = create_capture_app(CaptureConfig(upstream=upstream.url, db=store.path), store)
        with serving(app) as url:
            client = openai_client(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
            answers = [_ask(client, t).parse().choices[0].message.content for t in texts]
        store.close()
        assert len(upstream.log) == len(texts)
        assert all(json.loads(a)["intent"] in INTENTS for a in answers)

        # 2. the task and fit, from the capture alone
        with CaptureStore(tmp_path / "capture.sqlite") as store:
            summary = build_task(store, tmp_path / "task")
        assert summary.answers.key == "intent" and summary.template is not None
        assert summary.template.prefix == "Request: " and summary.template.suffix == "\nIntent?"
        raw = yaml.safe_load((tmp_path / "task" / "fit.yaml").read_text())
        raw |= {
            "run_dir": str(tmp_path / "run"),
            "students": [{"kind": "linear"}],
            "evaluate": {"latency_queries": 10, "warmup": 2, "throughput_batches": 2},
            "select": {"quality_floor": "0.5 * teacher"},
            "route": {"target": "escalation <= 0.5"},
        }
        (tmp_path / "fit.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        asked = len(upstream.log)
        result = fit(load_fit_config(tmp_path / "fit.yaml"), progress=False, log=lambda _: None)
        assert len(upstream.log) == asked  # every answer came from the capture: none asked again
        teacher = next(c for c in result.results.candidates if c.name == "teacher")
        assert teacher.quality.accuracy is None and teacher.quality.teacher_agreement == 1.0
        assert result.results.selection is not None
        assert result.results.selection.metric == "teacher_agreement"

        # 3. the same client against smallfit serve: only the base URL changes
        traffic = tmp_path / "traffic.jsonl"
        sent: list[bytes] = []  # the bodies the application's client sends, byte for byte
        hooks = {"request": [lambda r: sent.append(r.read())]}
        esc = tmp_path / "escalations.jsonl"
        serve = ServeConfig(traffic_log=traffic, escalation_log=esc)
        with serving(create_app(tmp_path / "run", serve)) as url:
            client = openai_client(
                base_url=url + "/v1",
                api_key="anything",
                max_retries=0,
                http_client=httpx.Client(event_hooks=hooks),
            )
            local = _ask(client, texts[0])
            content = local.parse().choices[0].message.content
            assert json.loads(content)["intent"] in INTENTS  # the form the upstream used
            assert local.headers["x-smallfit-tier"] in ("linear", "teacher")
            # the same request streamed: answered here or by the upstream like the first (the
            # upstream's own spacing included: llama.cpp built for AVX2 writes '{ "intent"'),
            # so it asks for the same greedy decoding
            streamed = client.chat.completions.create(  # type: ignore[call-overload]
                model="smollm2",
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Request: {texts[0]}\nIntent?"},
                ],
                response_format=FORMAT,
                max_tokens=24,
                temperature=0,
                seed=0,
                stream=True,
            )
            pieces = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            assert pieces == content
            # an unsure text escalates: the application's request, as it came, with the
            # server's key, and the upstream's own answer back
            before = len(upstream.log)
            odd = _ask(client, "zx qv blorp wug")
            assert odd.headers["x-smallfit-tier"] == "teacher"
            (escalated,) = upstream.log[before:]
            assert escalated.body == sent[-1]
            assert escalated.authorization == f"Bearer {API_KEY}"
            assert escalated.usage == odd.parse().usage.model_dump(include=set(escalated.usage))
            label = json.loads(odd.parse().choices[0].message.content)["intent"]
            assert json.loads(esc.read_text("utf-8").splitlines()[-1])["label"] == label
            # the upstream failing: the best local answer, flagged (serve.fallback's default)
            upstream.rate, upstream.faults = 1.0, ("500",)
            down = _ask(client, "zx qv blorp wug")
            upstream.rate = 0.0
            assert down.headers["x-smallfit-fallback"] == "true"
            assert down.headers["x-smallfit-tier"] == "linear"
            assert json.loads(down.parse().choices[0].message.content)["intent"] in INTENTS
            # a request outside the task's template goes straight to the upstream
            other = client.chat.completions.with_raw_response.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=5,
                temperature=0,
            )
            assert other.headers["x-smallfit-tier"] == "upstream"
            assert upstream.log[-1].text == "Say hello."
            assert other.parse().choices[0].message.content  # llama.cpp's own answer
            # one the drop-in route cannot take (two answers) goes there too, not a 400
            two = client.chat.completions.with_raw_response.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=3,
                n=2,
            )
            assert two.headers["x-smallfit-tier"] == "upstream"
            assert upstream.log[-1].text == "Say hi."
            metrics = httpx.get(url + "/metrics").text
            assert 'smallfit_passthrough_total{reason="template"} 1.0' in metrics
            assert 'smallfit_passthrough_total{reason="schema"} 1.0' in metrics
            assert "smallfit_escalation_rate_window" in metrics

    # 4. what served traffic did, in the report: 4 answered here (the passed-through ones are not)
    served = [json.loads(line) for line in traffic.read_text("utf-8").splitlines()]
    assert [r["tier"] for r in served][-2:] == ["teacher", "linear"] and len(served) == 4
    assert all("text" not in r for r in served)  # never the text itself
    page = write_report(tmp_path / "run", tmp_path / "r.html", cards=False, traffic_log=traffic)
    html = page.read_text("utf-8")
    assert "<h2>Served traffic</h2>" in html and "4 texts answered" in html
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a traffic log line"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(traffic.read_text("utf-8").splitlines()[0] + "\n{}\n", encoding="utf-8")
        write_report(tmp_path / "run", tmp_path / "r2.html", traffic_log=bad)
