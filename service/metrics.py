"""Prometheus metrics of one app instance (its own registry, so several apps can share a process).

* ``sasreid_http_request_duration_seconds{method, route, status}``: latency per route template;
* ``sasreid_embed_batch_size`` / ``sasreid_embed_batch_seconds``: tracklets per model call and
  the time of each call (the micro-batching effect is visible in the first);
* ``sasreid_gallery_tracklets`` / ``sasreid_gallery_identities``: indexed gallery size, read at
  scrape time;
* ``sasreid_ready``: 1 once the model is loaded and the index restored;
* ``sasreid_gallery_sync_changes_total`` / ``sasreid_gallery_sync_errors_total`` /
  ``sasreid_gallery_sync_position``: changes read from the store's change feed and applied, failed
  polls, and the feed position reached (replicas that agree have the same position);
* ``sasreid_query_stage_duration_seconds{stage}``: each query's time per stage (``decode``,
  ``embed``, ``search``, ``rerank``; a batch query observes each of its queries), the server-side
  split of what ``sasreid_http_request_duration_seconds`` sees as one number;
* ``sasreid_index_descriptor_bytes``: bytes of the indexed descriptors (tracklets x dim x 4), the
  floor of the index's memory, read at scrape time;
* the client library's default ``process_*`` (CPU seconds, resident memory, open file
  descriptors; Linux) and ``python_*`` (interpreter version, garbage collections) collectors, on
  this registry so one scrape has them all.

Names follow the Prometheus conventions: base units in the name (``_seconds``, ``_bytes``),
counters end in ``_total`` (the client library appends it), labels of bounded cardinality.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST as PROM_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.versioning import served_route

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Stages are short (a search of a small gallery takes well under a millisecond): finer low buckets.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *_LATENCY_BUCKETS)
QUERY_STAGES = ("decode", "embed", "search", "rerank")

__all__ = ["PROM_CONTENT_TYPE", "MetricsMiddleware", "ServiceMetrics"]


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
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

        self.query_stage_seconds = Histogram(
            "sasreid_query_stage_duration_seconds",
            "seconds per query in each stage: decode (frames), embed (model), search, rerank",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        for stage in QUERY_STAGES:
            self.query_stage_seconds.labels(stage)  # every stage exported from the start, at 0
        self.index_descriptor_bytes = Gauge(
            "sasreid_index_descriptor_bytes",
            "bytes of the indexed descriptors (tracklets x dim x 4 bytes)",
            registry=self.registry,
        )

    def observe_query(self, stages_ms: Mapping[str, float]) -> None:
        """One query's stage times in ms, for the stages it ran (a ``tracklet_id`` query has no
        decode or embed, a plain one no rerank), so each histogram counts the queries that ran it."""
        for stage, ms in stages_ms.items():
            self.query_stage_seconds.labels(stage).observe(max(0.0, ms) / 1e3)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def bind_gallery(
        self, tracklets: Callable[[], float], identities: Callable[[], float], dim: int | None = None
    ) -> None:
        self.gallery_tracklets.set_function(tracklets)
        self.gallery_identities.set_function(identities)
        if dim is not None:
            self.index_descriptor_bytes.set_function(lambda: tracklets() * dim * 4)

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
            # The full template (with the /v1 prefix): scope["route"] only tells that one matched.
            route = served_route(scope["app"], scope["path"], scope["method"]) if scope.get("route") else None
            template = route.path if route is not None else "<unmatched>"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
