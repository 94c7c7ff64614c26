"""Prometheus metrics, served as text at `/_proxy/metrics`.

One registry per proxy (not the process-global one), so tests and embedded uses stay apart.
Label values are bounded: scope kinds (not project names), methods, status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.scope import Scope
from proxy.tokens import TokenStatus

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TOKEN_EVENTS: Final = {
    "issued": "ok", "latched": "rejected", "project_refused": "project_refused",
    "identity_unavailable": "unavailable",
    "rescope_refused": "rescope_refused", "invalidated": "invalidated",
}
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _TokenExpiry(Collector):
    """Seconds until each cached token expires, read when scraped."""

    def __init__(self, status: Callable[[], list[TokenStatus]]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("zcompute_proxy_token_seconds_left",
                                   "Seconds until the cached token of a scope expires",
                                   labels=["scope"])
        for row in self._status():
            family.add_metric([row.scope], row.seconds_left)
        yield family


class Metrics:
    """The proxy's counters and histograms."""

    def __init__(self, token_status: Callable[[], list[TokenStatus]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("zcompute_proxy_requests", "Requests forwarded, by route scope",
                                ["scope", "method", "status"], registry=self.registry)
        self.latency = Histogram("zcompute_proxy_request_seconds",
                                 "Request latency: total, and the upstream's part",
                                 ["part"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bytes = Counter("zcompute_proxy_body_bytes", "Body bytes relayed",
                             ["direction"], registry=self.registry)
        self.identity = Counter("zcompute_proxy_token_events",
                                "Logins, re-scopes and renewals by scope kind and result",
                                ["scope", "result"], registry=self.registry)
        self.registry.register(_TokenExpiry(token_status))
        self._total = self.latency.labels("total")
        self._upstream = self.latency.labels("upstream")
        self._out = self.bytes.labels("to_client")
        self._in = self.bytes.labels("to_upstream")
        self._counters: dict[tuple[str, str, int], Counter] = {}  # `labels` is not cheap

    def request(self, scope_kind: str, method: str, status: int, *, total: float,
                upstream: float, body_bytes: int, upload_bytes: int) -> None:
        """Record one forwarded request."""
        method = method if method in KNOWN_METHODS else "OTHER"
        key = (scope_kind, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(scope_kind, method, str(status))
        counter.inc()
        self._total.observe(total)
        if upstream:
            self._upstream.observe(upstream)
        if body_bytes:
            self._out.inc(body_bytes)
        if upload_bytes:
            self._in.inc(upload_bytes)

    def token_event(self, event: str, scope: Scope, _fields: dict[str, Any]) -> None:
        """A TokenManager listener: count logins, re-scopes, failures and invalidations."""
        result = TOKEN_EVENTS.get(event)
        if result is not None:
            self.identity.labels(scope.kind.value, result).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
