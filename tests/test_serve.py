"""The HTTP server over a real socket (uvicorn on 127.0.0.1): classify through a real cascade,
limits, admin auth, hot swap under concurrent requests, metrics, escalation log, shadow, and the
fallback when the remote tier stalls (a real llama.cpp server behind a proxy that holds replies)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from smallfit.config import DataConfig, ServeConfig
from smallfit.data import load_dataset, read_split
from smallfit.models import load
from smallfit.route import Cascade, Tier
from smallfit.serve.app import create_app, resolve_model_path
from smallfit.testing.http import serving

pytestmark = [pytest.mark.server, pytest.mark.slow]

TOKEN = "admin-token-for-tests"


@pytest.fixture(scope="module")
def models(
    snips_slice: Path,
    snips_minilm: Path,
    snips_linear: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """(linear dir, minilm dir, cascade dir linear -> minilm at threshold 0.6, test texts)."""
    root = tmp_path_factory.mktemp("serve-models")
    data = load_dataset(
        DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    )
    linear_dir = snips_linear
    linear, minilm = load(linear_dir), load(snips_minilm)
    cascade = Cascade(
        [
            Tier(model=linear, threshold=0.6, path=linear_dir),
            Tier(model=minilm, threshold=None, path=Path(snips_minilm)),
        ]
    )
    cascade_dir = cascade.save(root / "cascade")
    return linear_dir, Path(snips_minilm), cascade_dir, data.test.texts


def _post(client: httpx.Client, texts: list[str]) -> httpx.Response:
    return client.post("/v1/classify", json={"texts": texts})


def test_classify_over_a_socket_answers_as_the_cascade_does(models, tmp_path: Path) -> None:
    _, _, cascade_dir, texts = models
    log = tmp_path / "escalations.jsonl"
    app = create_app(cascade_dir, ServeConfig(escalation_log=log, top_k=2, max_texts=256))
    offline = load(cascade_dir).decide(texts)
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["tiers"] == ["linear", "s"]
        body = _post(client, texts).json()
        answers = body["results"]
        assert len(answers) == len(texts) and body["model"] == "cascade"
        labels = load(cascade_dir).labels
        assert [a["label"] for a in answers] == [labels[i] for i in offline.probs.argmax(1)]
        assert [a["tier_index"] for a in answers] == offline.tier.tolist()
        assert all(len(a["probs"]) == 2 and a["label"] in a["probs"] for a in answers)
        assert {a["tier"] for a in answers} == {"linear", "s"}  # both tiers answered some
        metrics = client.get("/metrics").text
        docs = client.get("/openapi.json").json()
    escalated = [t for t, a in zip(texts, answers, strict=True) if a["tier_index"] == 1]
    # metrics: requests, texts per tier, escalations, the rate, latency histograms per tier
    assert 'smallfit_requests_total{status="200"} 1.0' in metrics
    assert f'smallfit_texts_total{{tier="s"}} {float(len(escalated))}' in metrics
    assert f'smallfit_escalations_total{{tier="linear"}} {float(len(escalated))}' in metrics
    rate = float(
        next(
            ln for ln in metrics.splitlines() if ln.startswith("smallfit_escalation_rate ")
        ).split()[1]
    )
    assert rate == pytest.approx(len(escalated) / len(texts))
    # fewer texts than the window: the window's rate is the whole rate; a cascade saved without
    # its calibration has no calibrated rate to compare with
    assert f"smallfit_escalation_rate_window {rate}" in metrics
    assert "smallfit_escalation_rate_calibrated NaN" in metrics
    assert 'smallfit_tier_latency_seconds_count{tier="linear"}' in metrics
    assert "/v1/classify" in docs["paths"] and "/admin/swap" in docs["paths"]
    # the escalation log: each escalated text with the big tier's answer, readable as train data
    logged = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    assert [r["text"] for r in logged] == escalated
    assert all(r["tier"] == "s" for r in logged)
    assert read_split(log).labels == [r["label"] for r in logged]


def test_limits_refuse_with_clear_messages(models) -> None:
    linear_dir, *_ = models
    config = ServeConfig(max_texts=4, max_text_chars=50, max_body_bytes=2000)
    with serving(create_app(linear_dir, config)) as url, httpx.Client(base_url=url) as client:
        too_many = _post(client, ["play jazz"] * 5)
        assert too_many.status_code == 422 and "at most 4" in too_many.text
        too_long = _post(client, ["fine", "x" * 51])
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["field"] == "texts.1"
        too_big = client.post("/v1/classify", content=b'{"texts": ["' + b"a" * 3000 + b'"]}')
        assert too_big.status_code == 413 and "at most 2000 bytes" in too_big.text
        empty = _post(client, [])
        assert empty.status_code == 422 and empty.json()["detail"][0]["field"] == "texts"
        wrong = client.post("/v1/classify", json={"text": "play jazz"})
        assert wrong.status_code == 422
        assert _post(client, ["play some jazz"]).status_code == 200  # still serving
        metrics = client.get("/metrics").text
    assert 'smallfit_requests_total{status="422"} 4.0' in metrics


def test_admin_routes_need_the_bearer_token(models, monkeypatch: pytest.MonkeyPatch) -> None:
    linear_dir, minilm_dir, *_ = models
    monkeypatch.delenv("SMALLFIT_ADMIN_TOKEN", raising=False)
    with serving(create_app(linear_dir)) as url, httpx.Client(base_url=url, timeout=60) as c:
        off = c.post("/admin/swap", json={"path": str(minilm_dir)})
        assert off.status_code == 403 and "SMALLFIT_ADMIN_TOKEN" in off.text
        monkeypatch.setenv("SMALLFIT_ADMIN_TOKEN", TOKEN)
        assert c.post("/admin/swap", json={"path": str(minilm_dir)}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            c.post("/admin/swap", json={"path": str(minilm_dir)}, headers=wrong).status_code == 401
        )
        good = {"Authorization": f"Bearer {TOKEN}"}
        bad_path = c.post("/admin/swap", json={"path": "/no/such/model"}, headers=good)
        assert bad_path.status_code == 404 and "live model unchanged" in bad_path.text
        assert c.get("/readyz").json()["model"] == "linear"
        ok = c.post("/admin/swap", json={"path": str(minilm_dir)}, headers=good)
        assert ok.status_code == 200 and ok.json()["model"] == "s"
        assert _post(c, ["play some jazz"]).json()["model"] == "s"


def test_hot_swap_under_concurrent_requests_fails_none(
    models, monkeypatch: pytest.MonkeyPatch
) -> None:
    linear_dir, minilm_dir, _, texts = models
    monkeypatch.setenv("SMALLFIT_ADMIN_TOKEN", TOKEN)
    stop = threading.Event()
    statuses: list[int] = []
    served_by: list[str] = []
    errors: list[str] = []

    def hammer(url: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                batch = [texts[i] for i in rng.integers(0, len(texts), 1 + seed % 3)]
                try:
                    response = _post(client, batch)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                statuses.append(response.status_code)
                if response.status_code == 200:
                    served_by.append(response.json()["model"])

    with serving(create_app(linear_dir)) as url:
        workers = [threading.Thread(target=hammer, args=(url, s)) for s in range(4)]
        for w in workers:
            w.start()
        with httpx.Client(base_url=url, timeout=120) as admin:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for target in (minilm_dir, linear_dir, minilm_dir, linear_dir):
                before = len(statuses)
                swapped = admin.post("/admin/swap", json={"path": str(target)}, headers=headers)
                assert swapped.status_code == 200, swapped.text
                while len(statuses) < before + 20:  # some traffic on each model
                    stop.wait(0.02)
            stop.set()
            for w in workers:
                w.join()
            metrics = admin.get("/metrics").text
    assert not errors and statuses and set(statuses) == {200}
    assert {"linear", "s"} <= set(served_by)
    assert "smallfit_model_swaps_total 4.0" in metrics
    assert f'smallfit_requests_total{{status="200"}} {float(len(statuses))}' in metrics


def test_shadow_agreement_is_reported_and_answers_unaffected(
    models, monkeypatch: pytest.MonkeyPatch
) -> None:
    linear_dir, minilm_dir, _, texts = models
    monkeypatch.setenv("SMALLFIT_ADMIN_TOKEN", TOKEN)
    live_only = load(linear_dir).predict(texts)
    shadow_labels = load(minilm_dir).predict(texts)
    with (
        serving(create_app(linear_dir, ServeConfig(max_texts=256))) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (
            c.post("/admin/shadow", json={"path": str(minilm_dir)}, headers=headers).json()["model"]
            == "s"
        )
        answers = [a["label"] for a in _post(c, texts).json()["results"]]
        for _ in range(200):  # the shadow answers after the response
            metrics = c.get("/metrics").text
            if f"smallfit_shadow_compared_total {float(len(texts))}" in metrics:
                break
            threading.Event().wait(0.05)
    assert answers == live_only
    agreed = sum(a == b for a, b in zip(live_only, shadow_labels, strict=True))
    assert f"smallfit_shadow_compared_total {float(len(texts))}" in metrics
    assert f"smallfit_shadow_agreed_total {float(agreed)}" in metrics


def test_a_run_directory_serves_its_cascade_or_its_choice(models, tmp_path: Path) -> None:
    linear_dir, _, cascade_dir, _ = models
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "models" / "linear").symlink_to(linear_dir)
    from smallfit.config import EvalConfig
    from smallfit.data import Split
    from smallfit.evaluate import evaluate_candidate
    from smallfit.models.base import load
    from smallfit.run.records import RunResults, SelectionRecord
    from smallfit.run.store import Run

    gold = load(linear_dir).labels[:2]
    test = Split(texts=["play some jazz", "will it rain"], labels=gold, source="inline")
    fast = EvalConfig(isolate=False, threads=[1], latency_queries=4, warmup=1, throughput_batches=1)
    measured = evaluate_candidate(linear_dir, test=test, teacher_test_probs=None, config=fast)
    chose = SelectionRecord(chosen="linear", metric="accuracy", floor=0.0, reason="a test")
    Run(run).write_results(
        RunResults(environment={}, candidates=[measured.result], selection=chose)
    )
    assert resolve_model_path(run) == run / "models" / "linear"
    (run / "models" / "cascade").symlink_to(cascade_dir)
    assert resolve_model_path(run) == run / "models" / "cascade"


def test_a_stalled_remote_tier_falls_back_to_the_best_local_answer(
    models, llama_url: str, llm_env: str, tmp_path: Path
) -> None:
    """The big tier is SmolLM2 on llama.cpp behind a proxy that holds every reply past the
    cascade's timeout: the cheap tier's answer stands, flagged; with fallback 'error', 503."""
    from smallfit.config import LLMTeacher
    from smallfit.route.calibration import NEVER
    from smallfit.teach import llm_classifier
    from smallfit.testing.fault_proxy import FaultProxy

    linear_dir, _, _, texts = models
    linear = load(linear_dir)
    with FaultProxy(llama_url, rate=1.0, faults=("stall",), stall_s=4.0) as proxy:
        teacher = LLMTeacher(base_url=proxy.url, model="smollm2", timeout_s=3.0, max_retries=0)
        llm = llm_classifier(
            teacher, linear.labels, examples=[], name="llm", cache=tmp_path / "llm.sqlite"
        )
        llm_dir = llm.save(tmp_path / "llm")
        cascade = Cascade(
            [
                Tier(model=linear, threshold=NEVER, path=linear_dir),  # escalate everything
                Tier(model=load(llm_dir), threshold=None, path=llm_dir),
            ],
            timeout_s=1.0,
        )
        cascade_dir = cascade.save(tmp_path / "cascade")
        offline = load(cascade_dir).decide(texts[:2])
        assert offline.fallback.all() and (offline.tier == 0).all()
        assert [cascade.labels[i] for i in offline.probs.argmax(1)] == linear.predict(texts[:2])

        with serving(create_app(cascade_dir)) as url, httpx.Client(base_url=url, timeout=60) as c:
            answers = _post(c, texts[:2]).json()["results"]
            metrics = c.get("/metrics").text
        assert all(a["fallback"] and a["tier"] == "linear" for a in answers)
        assert [a["label"] for a in answers] == linear.predict(texts[:2])
        assert 'smallfit_fallbacks_total{tier="linear"} 2.0' in metrics
        assert 'smallfit_errors_total{kind="timeout"} 1.0' in metrics

        strict = create_app(cascade_dir, ServeConfig(fallback="error"))
        with serving(strict) as url, httpx.Client(base_url=url, timeout=60) as c:
            refused = _post(c, texts[:1])
            chat = {"model": "m", "messages": [{"role": "user", "content": texts[0]}]}
            chat_refused = c.post("/v1/chat/completions", json=chat)
            tei_refused = c.post("/predict", json={"inputs": texts[0]})
        assert refused.status_code == 503 and "timed out" in refused.text
        # the drop-in routes refuse in their own clients' shapes
        assert chat_refused.status_code == 503
        assert chat_refused.json()["error"]["type"] == "server_error"
        assert "timed out" in chat_refused.json()["error"]["message"]
        assert tei_refused.status_code == 503 and tei_refused.json()["error_type"] == "Backend"


def test_the_serve_command_serves_a_model(models, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from smallfit.testing.llama_server import free_port

    linear_dir, *_ = models
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smallfit.cli", "serve", str(linear_dir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "smallfit serve never became ready"
            time.sleep(0.3)
        answer = httpx.post(url + "/v1/classify", json={"texts": ["play some jazz"]}).json()
        assert answer["results"][0]["label"] == load(linear_dir).predict(["play some jazz"])[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    bad = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "serve", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "neither a model directory" in bad.stderr


def test_the_escalation_window_slides_and_restarts_with_a_new_model() -> None:
    from smallfit.serve.metrics import Metrics

    metrics = Metrics(window=4)
    metrics.live_model("cascade", "cascade", calibrated=0.25)
    for tier in (1, 1, 0, 0, 0, 0):  # the two escalations slide out of the last 4
        metrics.answered(tier)
    page = metrics.render().decode()
    assert "smallfit_escalation_rate_window 0.0" in page
    assert "smallfit_escalation_rate_calibrated 0.25" in page
    assert "smallfit_escalation_rate 0.3333333333333333" in page  # since start
    metrics.answered(1, count=2)
    assert "smallfit_escalation_rate_window 0.5" in metrics.render().decode()
    metrics.live_model("other", "cascade")
    metrics.answered(0)
    page = metrics.render().decode()
    assert "smallfit_escalation_rate_window 0.0" in page
    assert "smallfit_escalation_rate_calibrated NaN" in page
