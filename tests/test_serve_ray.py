"""``smallfit serve --engine ray``: two replicas of the app behind Ray Serve's HTTP proxy on a local
Ray cluster. They answer ``/v1/classify`` and the drop-in chat endpoint as the single-process
server does, a hot swap on one replica reaches both under load with no failed request, and
``/metrics`` on either adds both up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from smallfit.engine.config import EngineConfig
from smallfit.serve.app import create_app
from smallfit.serve.config import ServeConfig
from smallfit.testing.http import serving
from smallfit.testing.llama_server import free_port
from smallfit.testing.load import ClassifyLoad
from smallfit.testing.load import metric_samples as samples

pytest.importorskip("ray.serve")  # .ci/run installs it (the dev extra): never skipped there

pytestmark = [pytest.mark.slow, pytest.mark.server]

TOKEN = "admin-token-for-ray-tests"


def answers(body: dict[str, Any]) -> list[tuple[str, dict[str, float], str]]:
    """What a /v1/classify body says about each text (not its timings)."""
    return [(r["label"], r["probs"], r["tier"]) for r in body["results"]]


@pytest.fixture(scope="module")
def service(local_ray: str, snips_linear: Path) -> Any:
    """The service: two replicas of the app serving ``snips_linear``, the admin token set
    where it is started (the replicas get it from there)."""
    from smallfit.serve.ray_serve import ray_service

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLFIT_ADMIN_TOKEN", TOKEN)
        with ray_service(
            snips_linear, ServeConfig(port=free_port()), EngineConfig(kind="ray", workers=2)
        ) as url:
            yield url


def test_replicas_answer_as_the_single_process_server(
    service: str, snips_linear: Path, snips_texts: list[str], openai_client: Any
) -> None:
    texts = snips_texts[:24]
    with (
        serving(create_app(snips_linear)) as single,
        httpx.Client(base_url=service, timeout=60) as ray_client,
        httpx.Client(base_url=single, timeout=60) as one_client,
    ):
        for start in range(0, len(texts), 6):  # several requests: both replicas answer some
            body = {"texts": texts[start : start + 6]}
            got = ray_client.post("/v1/classify", json=body)
            want = one_client.post("/v1/classify", json=body)
            assert got.status_code == want.status_code == 200, got.text
            assert answers(got.json()) == answers(want.json())
        refused = ray_client.post("/v1/classify", json={"texts": []})
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "texts"
    client = openai_client(base_url=f"{service}/v1", api_key="unused")
    for text in texts[:4]:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )
        direct = httpx.post(f"{service}/v1/classify", json={"texts": [text]}, timeout=60)
        assert reply.choices[0].message.content == direct.json()["results"][0]["label"]


def test_a_swap_rolls_over_every_replica_with_no_failed_request(
    service: str, snips_minilm: Path, snips_linear: Path, snips_texts: list[str]
) -> None:
    with httpx.Client(base_url=service, timeout=120) as admin:
        time.sleep(1.5)  # every replica has pushed the counts of the requests before this test
        before = samples(admin.get("/metrics").text, "smallfit_requests_total")
        counted_before = sum(v for labels, v in before if labels.get("status") == "200")
        with ClassifyLoad(service, snips_texts) as load:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for target, name in ((snips_minilm, "s"), (snips_linear, "linear")):
                swapped = admin.post("/admin/swap", json={"path": str(target)}, headers=headers)
                assert swapped.status_code == 200, swapped.text
                deadline = time.monotonic() + 60
                while True:  # every replica reports the new model in the service's metrics
                    info = samples(admin.get("/metrics").text, "smallfit_model_info")
                    if len(info) == 2 and all(labels["name"] == name for labels, _ in info):
                        break
                    assert time.monotonic() < deadline, info
                    time.sleep(0.2)
                load.wait_for(30)  # traffic on the new model too
        time.sleep(1.5)  # every replica has pushed its latest counts
        metrics = admin.get("/metrics").text
    statuses, errors = load.statuses, load.errors
    assert not errors and statuses and set(statuses) == {200}, (errors, set(statuses))
    assert samples(metrics, "smallfit_replicas") == [({}, 2.0)]
    counted = sum(
        v for labels, v in samples(metrics, "smallfit_requests_total") if labels["status"] == "200"
    )
    assert counted - counted_before == len(statuses)
    # each replica swapped twice (a replica's first load is not a swap)
    assert samples(metrics, "smallfit_model_swaps_total") == [({}, 4.0)]


def test_an_unreachable_cluster_is_refused_in_one_line(snips_linear: Path) -> None:
    from test_cli import run_cli

    out = run_cli(
        "serve", str(snips_linear), "--engine", "ray", "--ray-address", "127.0.0.1:9",
        "--port", str(free_port()),
    )  # fmt: skip
    assert out.returncode == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in out.stderr
