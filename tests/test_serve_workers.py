"""``smallfit serve --workers 2``: two worker processes behind one port, started by the real CLI.
They answer as the single-process server does, connections are shared between them, a hot swap
on one reaches both under load with no failed request, ``/metrics`` on either adds both up, a
killed worker is replaced, a model that does not load stops the server with one line, and
Ctrl-C stops every process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smallfit.serve.app import create_app
from smallfit.testing.http import serving
from smallfit.testing.llama_server import free_port
from smallfit.testing.load import ClassifyLoad
from smallfit.testing.load import metric_samples as samples

pytestmark = [pytest.mark.slow, pytest.mark.server]

TOKEN = "admin-token-for-worker-tests"


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(text, name) if labels.items() >= match.items())


def settled(url: str, name: str, **match: str) -> float:
    """``total`` once every worker has written its latest counts (two reads a sync apart
    agree)."""
    deadline = time.monotonic() + 30
    last = total(httpx.get(f"{url}/metrics", timeout=10).text, name, **match)
    while True:
        time.sleep(0.6)
        now = total(httpx.get(f"{url}/metrics", timeout=10).text, name, **match)
        if now == last:
            return now
        assert time.monotonic() < deadline, "the metrics did not settle"
        last = now


def answers(body: dict[str, Any]) -> list[tuple[str, dict[str, float], str]]:
    return [(r["label"], r["probs"], r["tier"]) for r in body["results"]]


def start(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The server, its stderr in ``log`` (a file: a pipe nobody reads could fill and stall
    it)."""
    command = [sys.executable, "-m", "smallfit.cli", "serve", str(model), "--port", str(port)]
    env = {**os.environ, "SMALLFIT_ADMIN_TOKEN": TOKEN}
    with log.open("wb") as err:
        return subprocess.Popen([*command, "--workers", "2"], env=env, stderr=err)


def workers_reporting(url: str, count: int, timeout: float = 120) -> dict[str, str]:
    """Once ``count`` workers report in ``/metrics``: each one's id -> the model it serves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = samples(httpx.get(f"{url}/metrics", timeout=10).text, "smallfit_model_info")
            if len(info) == count:
                return {labels["replica"]: labels["name"] for labels, _ in info}
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the workers did not all report"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(
    snips_linear: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start(snips_linear, port, tmp_path_factory.mktemp("workers") / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        workers_reporting(url, 2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_workers_answer_as_one_process_does_and_share_the_connections(
    server: tuple[str, subprocess.Popen[bytes]], snips_linear: Path, snips_texts: list[str]
) -> None:
    url, _ = server
    texts = snips_texts[:24]
    before = settled(url, "smallfit_requests_total", status="200")
    with serving(create_app(snips_linear)) as single, httpx.Client(base_url=single) as one:
        clients = [httpx.Client(base_url=url, timeout=60) for _ in range(4)]  # 4 connections
        try:
            for i, start_at in enumerate(range(0, len(texts), 3)):
                body = {"texts": texts[start_at : start_at + 3]}
                got = clients[i % 4].post("/v1/classify", json=body)
                assert got.status_code == 200, got.text
                assert answers(got.json()) == answers(one.post("/v1/classify", json=body).json())
        finally:
            for client in clients:
                client.close()
    assert settled(url, "smallfit_requests_total", status="200") - before == 8
    text = httpx.get(f"{url}/metrics").text
    assert samples(text, "smallfit_replicas") == [({}, 2.0)]
    # a shadow set through one worker would shadow a share of the traffic: refused, by name
    refused = httpx.post(
        f"{url}/admin/shadow",
        json={"path": str(snips_linear)},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert refused.status_code == 409 and "--shadow" in refused.json()["detail"]


def test_a_swap_reaches_both_workers_under_load_with_no_failed_request(
    server: tuple[str, subprocess.Popen[bytes]],
    snips_minilm: Path,
    snips_linear: Path,
    snips_texts: list[str],
) -> None:
    url, _ = server
    swaps_before = settled(url, "smallfit_model_swaps_total")
    with ClassifyLoad(url, snips_texts) as load, httpx.Client(base_url=url, timeout=120) as admin:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for target, name in ((snips_minilm, "s"), (snips_linear, "linear")):
            swapped = admin.post("/admin/swap", json={"path": str(target)}, headers=headers)
            assert swapped.status_code == 200, swapped.text
            deadline = time.monotonic() + 60
            while set(workers_reporting(url, 2).values()) != {name}:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            load.wait_for(20)  # requests answered after the swap, too
    assert load.errors == [] and set(load.statuses) == {200}, (load.errors[:3], load.statuses)
    swaps = settled(url, "smallfit_model_swaps_total") - swaps_before
    assert swaps == 4  # two swaps, each on both workers


def test_a_killed_worker_is_replaced_and_its_counts_kept(
    server: tuple[str, subprocess.Popen[bytes]], snips_texts: list[str]
) -> None:
    url, _ = server
    before = settled(url, "smallfit_requests_total", status="200")
    victim = sorted(workers_reporting(url, 2))[0]
    os.kill(int(victim.rsplit("-", 1)[1]), signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + 120
    while True:  # new connections reach the live worker, then the new one too
        try:
            reply = httpx.post(f"{url}/v1/classify", json={"texts": snips_texts[:2]}, timeout=30)
            answered += reply.status_code == 200
        except httpx.HTTPError:
            pass  # a connection the dead worker had been handed
        reporting = workers_reporting(url, 2)
        if victim not in reporting and answered >= 10:
            break
        assert time.monotonic() < deadline, reporting
    after = settled(url, "smallfit_requests_total", status="200")
    assert after - before >= answered  # the dead worker's counts stay in the totals


def test_a_model_that_does_not_load_stops_the_server_with_one_line(
    snips_linear: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(snips_linear, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    proc = start(broken, free_port(), tmp_path / "serve.log")
    assert proc.wait(timeout=180) == 2
    err = (tmp_path / "serve.log").read_text()
    assert err.strip().splitlines()[-1].startswith("error: worker ")
    assert "before serving" in err


def test_ctrl_c_stops_every_worker(snips_linear: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = start(snips_linear, port, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    pids = [int(w.rsplit("-", 1)[1]) for w in workers_reporting(url, 2)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/readyz")


def test_a_worker_that_cannot_restart_is_retried_while_the_other_serves(
    snips_linear: Path, snips_texts: list[str], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(snips_linear, model)
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(model, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        victim = sorted(workers_reporting(url, 2))[1]
        weights = next(model.glob("*.safetensors"))
        good = weights.read_bytes()
        weights.write_bytes(b"not safetensors")  # a restart cannot load the model now
        os.kill(int(victim.rsplit("-", 1)[1]), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while "starting another in 2 s" not in log.read_text():  # its successor failed too
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for _ in range(6):  # the other worker answers meanwhile
            reply = httpx.post(f"{url}/v1/classify", json={"texts": snips_texts[:1]}, timeout=30)
            assert reply.status_code == 200
        weights.write_bytes(good)
        deadline = time.monotonic() + 120
        while victim in (reporting := workers_reporting(url, 2)):  # the next try serves
            assert time.monotonic() < deadline, reporting
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
