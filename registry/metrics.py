"""Prometheus metrics: one registry of them per server process, rendered at ``/metrics``.

Route labels are the route templates (``/v2/{name}/blobs/{digest}``), never raw paths,
so a scrape stays the same size however many repositories and digests are served.
Figures that belong to the store rather than to a process (open upload sessions, the
totals of every GC run) are read from storage at scrape time, at most every few seconds.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage_backends import PathNotFound, StorageDriver

from . import layout
from .gc import read_gc_totals

CONTENT_TYPE = CONTENT_TYPE_LATEST
STORE_FIGURES_MAX_AGE = 10.0  # seconds a scrape may reuse the store's figures
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "pier_http_requests", "HTTP requests answered", ("route", "method", "status"), registry=r
        )
        self.latency = Histogram(
            "pier_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            ("route", "method"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received = Counter("pier_http_received_bytes", "Request body bytes", ("route",), registry=r)
        self.sent = Counter("pier_http_sent_bytes", "Response body bytes", ("route",), registry=r)
        self.in_flight = Gauge("pier_http_requests_in_flight", "Requests being served", registry=r)
        self.storage_latency = Histogram(
            "pier_storage_operation_duration_seconds",
            "Storage operations (for reads: until the first bytes)",
            ("backend", "operation"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter(
            "pier_storage_errors",
            "Storage operations that failed (a missing path is not a failure)",
            ("backend", "operation"),
            registry=r,
        )
        self.mirror_requests = Counter(
            "pier_mirror_requests",
            "Mirrored manifests and blobs asked for: hit, miss (fetched), stale (upstream down)",
            ("kind", "result"),
            registry=r,
        )
        self.upstream_errors = Counter(
            "pier_mirror_upstream_errors", "Failed requests to upstreams", ("upstream", "reason"), registry=r
        )
        self.upload_sessions = Gauge(
            "pier_upload_sessions_open", "Upload sessions open in the store (every replica's)", registry=r
        )
        # The store's totals, kept by every GC run (``pier gc`` and the mirror's eviction).
        self.gc_runs = Gauge("pier_gc_runs_total", "GC runs (not dry runs) on this store", registry=r)
        self.gc_freed = Gauge("pier_gc_freed_bytes_total", "Bytes GC deleted from this store", registry=r)
        self.gc_last = Gauge("pier_gc_last_run_timestamp_seconds", "When GC last ran", registry=r)
        self._store_read_at = 0.0

    def request(self, route: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        if received:
            self.received.labels(route).inc(received)
        if sent:
            self.sent.labels(route).inc(sent)

    def mirror_event(self, kind: str, result: str) -> None:
        self.mirror_requests.labels(kind, result).inc()

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream, reason).inc()

    async def render(self, driver: StorageDriver) -> bytes:
        if time.monotonic() - self._store_read_at > STORE_FIGURES_MAX_AGE:
            await self._read_store(driver)
        return generate_latest(self.registry)

    async def _read_store(self, driver: StorageDriver) -> None:
        try:
            self.upload_sessions.set(len(await driver.list(layout.UPLOADS)))
        except PathNotFound:
            self.upload_sessions.set(0)
        totals = await read_gc_totals(driver)
        self.gc_runs.set(totals.get("runs", 0))
        self.gc_freed.set(totals.get("freed_bytes", 0))
        self.gc_last.set(totals.get("last_run", 0))
        self._store_read_at = time.monotonic()
