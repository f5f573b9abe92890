"""Prometheus metrics of one app instance (its own registry, so several apps can share a process).

* ``sasreid_http_request_duration_seconds{method, route, status}``: latency per route template;
* ``sasreid_embed_batch_size`` / ``sasreid_embed_batch_seconds``: tracklets per model call and
  the time of each call (the micro-batching effect is visible in the first);
* ``sasreid_gallery_tracklets`` / ``sasreid_gallery_identities``: indexed gallery size, read at
  scrape time;
* ``sasreid_ready``: 1 once the model is loaded and the index restored;
* ``sasreid_gallery_sync_changes_total`` / ``sasreid_gallery_sync_errors_total`` /
  ``sasreid_gallery_sync_position``: changes read from the store's change feed and applied, failed
  polls, and the feed position reached (replicas that agree have the same position).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as PROM_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)

__all__ = ["PROM_CONTENT_TYPE", "MetricsMiddleware", "ServiceMetrics"]


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "sasreid_http_request_duration_seconds",
            "HTTP request latency by route template",
            ("method", "route", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sasreid_embed_batch_size",
            "tracklets per embedding model call",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "sasreid_embed_batch_seconds",
            "seconds per embedding model call",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gallery_tracklets = Gauge(
            "sasreid_gallery_tracklets", "tracklets in the search index", registry=self.registry
        )
        self.gallery_identities = Gauge(
            "sasreid_gallery_identities", "identities in the search index", registry=self.registry
        )
        self.ready = Gauge("sasreid_ready", "1 when the service is ready", registry=self.registry)
        self.sync_changes = Counter(
            "sasreid_gallery_sync_changes",
            "changes read from the store's change feed and applied to this replica's gallery",
            registry=self.registry,
        )
        self.sync_errors = Counter(
            "sasreid_gallery_sync_errors",
            "polls of the store's change feed that failed (retried at the next poll)",
            registry=self.registry,
        )
        self.sync_position = Gauge(
            "sasreid_gallery_sync_position",
            "sequence number of the last change of the store's feed this replica has applied",
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def bind_gallery(self, tracklets: Callable[[], float], identities: Callable[[], float]) -> None:
        self.gallery_tracklets.set_function(tracklets)
        self.gallery_identities.set_function(identities)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and labels it with the matched route template (``/tracklets/{tracklet_id}``),
    not the raw path, so label cardinality stays bounded; unmatched paths share one label."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
