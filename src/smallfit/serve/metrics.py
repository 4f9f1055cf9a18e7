"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from collections import deque

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only add noise to a scrape

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and histograms of requests, tiers, escalations, errors, swaps and the shadow."""

    def __init__(self, window: int = 1000) -> None:
        self.registry = CollectorRegistry()
        self._window: deque[bool] = deque(maxlen=window)
        self._window_escalated = 0
        r = self.registry
        self.requests = Counter(
            "smallfit_requests", "Classify requests by HTTP status", ["status"], registry=r
        )
        self.request_latency = Histogram(
            "smallfit_request_latency_seconds",
            "Classify request latency (whole request)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter(
            "smallfit_texts", "Texts answered, by the tier that answered", ["tier"], registry=r
        )
        self.tier_latency = Histogram(
            "smallfit_tier_latency_seconds",
            "Per-text latency by the tier that answered (queueing included)",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            "smallfit_escalations", "Texts passed on from a tier to the next", ["tier"], registry=r
        )
        self.escalation_rate = Gauge(
            "smallfit_escalation_rate",
            "Share of answered texts that went past the first tier",
            registry=r,
        )
        self.escalation_window = Gauge(
            "smallfit_escalation_rate_window",
            f"Share of the last {window} answered texts that went past the first tier: beside "
            "smallfit_escalation_rate_calibrated, a rising gap is drift",
            registry=r,
        )
        self.escalation_calibrated = Gauge(
            "smallfit_escalation_rate_calibrated",
            "The live cascade's escalation rate on dev when it was calibrated (NaN: unknown)",
            registry=r,
        )
        self.escalation_calibrated.set(float("nan"))
        self.abstentions = Counter("smallfit_abstentions", "Texts abstained on", registry=r)
        self.fallbacks = Counter(
            "smallfit_fallbacks",
            "Texts answered by a local tier because a later tier failed or timed out",
            ["tier"],
            registry=r,
        )
        self.errors = Counter("smallfit_errors", "Errors by kind", ["kind"], registry=r)
        self.passthrough = Counter(
            "smallfit_passthrough",
            "Chat requests sent straight to the upstream, by reason (template: the request does "
            "not follow the task's template)",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "smallfit_batch_size",
            "Texts per micro-batch, by tier",
            ["tier"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.swaps = Counter("smallfit_model_swaps", "Models swapped in", registry=r)
        self.shadow_compared = Counter(
            "smallfit_shadow_compared", "Texts the shadow model also answered", registry=r
        )
        self.shadow_agreed = Counter(
            "smallfit_shadow_agreed",
            "Texts where the shadow agreed with the live answer",
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "smallfit_shadow_agreement", "Share of compared texts the shadow agreed on", registry=r
        )
        self.info = Gauge(
            "smallfit_model_info", "The live model (value 1)", ["name", "kind"], registry=r
        )
        self._answered = 0
        self._escalated = 0
        self._compared = 0
        self._agreed = 0

    def answered(self, tier_index: int, count: int = 1) -> None:
        self._answered += count
        if tier_index > 0:
            self._escalated += count
        self.escalation_rate.set(self._escalated / max(self._answered, 1))
        for _ in range(count):
            if len(self._window) == self._window.maxlen:
                self._window_escalated -= self._window.popleft()
            self._window.append(tier_index > 0)
            self._window_escalated += tier_index > 0
        self.escalation_window.set(self._window_escalated / len(self._window))

    def shadow(self, compared: int, agreed: int) -> None:
        self._compared += compared
        self._agreed += agreed
        self.shadow_compared.inc(compared)
        self.shadow_agreed.inc(agreed)
        self.shadow_agreement.set(self._agreed / max(self._compared, 1))

    def live_model(self, name: str, kind: str, calibrated: float | None = None) -> None:
        """A new live model: its name and kind, and its calibrated escalation rate (the
        window starts afresh)."""
        self.info.clear()
        self.info.labels(name=name, kind=kind).set(1)
        self.escalation_calibrated.set(float("nan") if calibrated is None else calibrated)
        self._window.clear()
        self._window_escalated = 0

    def render(self) -> bytes:
        return generate_latest(self.registry)


def merge_expositions(
    replicas: dict[str, bytes], *, retired: dict[str, bytes] | None = None
) -> bytes:
    """One Prometheus exposition from several replicas' (``replicas``: id -> text): counters
    and histograms summed (the service's totals), gauges kept one series per replica with a
    ``replica`` label (a rate or the live model is a replica's state, not a sum), and
    ``smallfit_replicas`` counting the replicas reporting. ``retired``: the last texts of
    replicas gone, whose counters and histograms stay in the totals (so they never go down)
    and whose gauges leave."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.utils import floatToGoString

    helps: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    sources = [(r, t, False) for r, t in sorted(replicas.items())]
    sources += [(r, t, True) for r, t in sorted((retired or {}).items())]
    for replica, text, gone in sources:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            helps.setdefault(family.name, (family.type, family.documentation))
            series = sums.setdefault(family.name, {})
            if gone and family.type == "gauge":
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if family.type == "gauge":
                    labels["replica"] = replica
                key = (sample.name, tuple(sorted(labels.items())))
                series[key] = series.get(key, 0.0) + sample.value
    lines = [
        "# HELP smallfit_replicas Replicas whose metrics are in this exposition",
        "# TYPE smallfit_replicas gauge",
        f"smallfit_replicas {floatToGoString(len(replicas))}",
    ]
    for name, (kind, documentation) in helps.items():
        shown = f"{name}_total" if kind == "counter" else name  # as prometheus_client writes it
        lines += [f"# HELP {shown} {_escape(documentation)}", f"# TYPE {shown} {kind}"]
        for (series_name, pairs), value in sums[name].items():
            if pairs:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
                lines.append(f"{series_name}{{{inner}}} {floatToGoString(value)}")
            else:
                lines.append(f"{series_name} {floatToGoString(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
