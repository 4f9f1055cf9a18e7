"""One exposition for a service of several replicas: counters and histograms summed, gauges one
series per replica, and a replica that goes away leaving its counts in the totals."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from smallfit.serve.metrics import Metrics, merge_expositions


def samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == name
    }


def replica(requests: int, latency_s: float, model: str) -> bytes:
    metrics = Metrics()
    metrics.requests.labels(status="200").inc(requests)
    for _ in range(requests):
        metrics.request_latency.observe(latency_s)
    metrics.live_model(model, "onnx")
    return metrics.render()


def test_counters_and_histograms_add_up_and_gauges_stay_per_replica() -> None:
    a, b = replica(3, 0.003, "m1"), replica(2, 0.02, "m2")
    merged = merge_expositions({"a": a, "b": b})
    assert samples(merged, "smallfit_requests_total") == {(("status", "200"),): 5.0}
    assert samples(merged, "smallfit_request_latency_seconds_count") == {(): 5.0}
    buckets = samples(merged, "smallfit_request_latency_seconds_bucket")
    assert buckets[(("le", "0.005"),)] == 3.0 and buckets[(("le", "0.025"),)] == 5.0
    info = samples(merged, "smallfit_model_info")
    assert info == {
        (("kind", "onnx"), ("name", "m1"), ("replica", "a")): 1.0,
        (("kind", "onnx"), ("name", "m2"), ("replica", "b")): 1.0,
    }
    assert samples(merged, "smallfit_replicas") == {(): 2.0}
    nan = samples(merged, "smallfit_escalation_rate_calibrated")
    assert len(nan) == 2 and all(v != v for v in nan.values())  # NaN stays NaN


def test_a_replica_gone_keeps_its_counts_and_leaves_the_gauges() -> None:
    a, b = replica(3, 0.003, "m1"), replica(2, 0.02, "m2")
    merged = merge_expositions({"a": a}, retired={"b": b})
    assert samples(merged, "smallfit_requests_total") == {(("status", "200"),): 5.0}
    assert set(samples(merged, "smallfit_model_info")) == {
        (("kind", "onnx"), ("name", "m1"), ("replica", "a"))
    }
    assert samples(merged, "smallfit_replicas") == {(): 1.0}
