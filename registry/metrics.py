"""Prometheus metrics: counted in plain dictionaries on the request path, rendered at ``/metrics``.

prometheus-client's own metric objects take a lock and validate labels on every call,
which cost 25 µs per manifest HEAD here (a third of the request). So requests and storage
operations are counted in dictionaries and lists (one event loop: no lock needed) and a
collector turns them into Prometheus families when scraped; prometheus-client writes the
exposition format. Route labels are templates (``/v2/{name}/blobs/{digest}``), never raw
paths. Figures that belong to the store, not to a process (open upload sessions, the
totals of every GC run), are read from storage at scrape time, at most every few seconds.

Under ``pier serve --workers N`` a scrape lands on one worker, so each worker writes its
counts to a run folder every second (``registry/workers.py``) and the one scraped renders
its own live counts and its siblings' last ones, each series labelled ``worker``; the store's
figures stay unlabelled, once. A single process has no ``worker`` label at all.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage_backends import StorageDriver

from . import layout
from .gc import read_gc_totals

CONTENT_TYPE = CONTENT_TYPE_LATEST
STORE_FIGURES_MAX_AGE = 10.0  # seconds a scrape may reuse the store's figures
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LE = [*(str(b) for b in BUCKETS), "+Inf"]


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bucket
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def to_json(self) -> list[Any]:
        return [self.counts, self.total]

    @classmethod
    def from_json(cls, data: Any) -> Histogram:
        counts, total = data
        if not (isinstance(counts, list) and len(counts) == len(BUCKETS) + 1):
            raise ValueError("histogram buckets differ")
        histogram = cls()
        histogram.counts = [int(count) for count in counts]
        histogram.total = float(total)
        return histogram

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            out.append((le, running))
        return out


class Series:
    """One (route, method, status): everything a request adds, behind one dictionary lookup."""

    __slots__ = ("count", "latency", "received", "sent")

    def __init__(self) -> None:
        self.count = self.received = self.sent = 0
        self.latency = Histogram()


@dataclass
class Counts:
    """What one process counted: this process's live figures, or a sibling worker's snapshot
    read back from the run folder. ``collect`` renders a list of these, so the live figures
    and the snapshots take the same path to the exposition text."""

    worker: str | None  # the label; None: a single process, no label
    pid: int
    in_flight: int
    series: dict[tuple[str, str, int], Series]
    storage_latency: dict[str, Histogram]
    storage_errors: dict[str, int]
    mirror_requests: dict[tuple[str, str], int]
    upstream_errors: dict[tuple[str, str], int]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "worker": self.worker,
                "pid": self.pid,
                "in_flight": self.in_flight,
                "series": [
                    [route, method, status, s.count, s.received, s.sent, s.latency.to_json()]
                    for (route, method, status), s in self.series.items()
                ],
                "storage_latency": {op: h.to_json() for op, h in self.storage_latency.items()},
                "storage_errors": self.storage_errors,
                "mirror_requests": [[*key, count] for key, count in self.mirror_requests.items()],
                "upstream_errors": [[*key, count] for key, count in self.upstream_errors.items()],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, text: bytes) -> Counts:
        """Raises ValueError, KeyError or TypeError on a snapshot that is not one."""
        data = json.loads(text)
        series: dict[tuple[str, str, int], Series] = {}
        for route, method, status, count, received, sent, latency in data["series"]:
            one = series[(str(route), str(method), int(status))] = Series()
            one.count, one.received, one.sent = int(count), int(received), int(sent)
            one.latency = Histogram.from_json(latency)
        return cls(
            worker=str(int(data["worker"])),  # an index: collect sorts by it
            pid=int(data["pid"]),
            in_flight=int(data["in_flight"]),
            series=series,
            storage_latency={str(op): Histogram.from_json(h) for op, h in data["storage_latency"].items()},
            storage_errors={str(op): int(n) for op, n in data["storage_errors"].items()},
            mirror_requests={(str(k), str(r)): int(n) for k, r, n in data["mirror_requests"]},
            upstream_errors={(str(u), str(r)): int(n) for u, r, n in data["upstream_errors"]},
        )


class Metrics:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        # Set by registry/workers.py in a worker of ``--workers N``: this one's label, and its
        # siblings' last snapshots (read at each scrape).
        self.worker: str | None = None
        self.siblings: Callable[[], list[Counts]] = list
        self.series: dict[tuple[str, str, int], Series] = {}  # (route, method, status)
        self.in_flight: Callable[[], int] = lambda: 0  # the server's own count, read when scraped
        self.storage_latency: dict[str, Histogram] = {}  # by operation
        self.storage_errors: dict[str, int] = {}
        self.mirror_requests: dict[tuple[str, str], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.store_figures: dict[str, float] = {}
        self._store_read_at = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- counting (the request path) ---------------------------------------------------
    def request(self, route: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        series = self.series.get((route, method, status))
        if series is None:
            series = self.series[(route, method, status)] = Series()
        series.count += 1
        series.received += received
        series.sent += sent
        series.latency.observe(seconds)

    def storage_histogram(self, operation: str) -> Histogram:
        histogram = self.storage_latency.get(operation)
        if histogram is None:
            histogram = self.storage_latency[operation] = Histogram()
        return histogram

    def storage_error(self, operation: str) -> None:
        self.storage_errors[operation] = self.storage_errors.get(operation, 0) + 1

    def mirror_event(self, kind: str, result: str) -> None:
        self.mirror_requests[(kind, result)] = self.mirror_requests.get((kind, result), 0) + 1

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors[(upstream, reason)] = self.upstream_errors.get((upstream, reason), 0) + 1

    # -- scraping ----------------------------------------------------------------------
    def counts(self) -> Counts:
        """This process's figures as they are now (the dictionaries themselves, not copies)."""
        return Counts(
            self.worker,
            os.getpid(),
            self.in_flight(),
            self.series,
            self.storage_latency,
            self.storage_errors,
            self.mirror_requests,
            self.upstream_errors,
        )

    async def render(self, driver: StorageDriver) -> bytes:
        if time.monotonic() - self._store_read_at > STORE_FIGURES_MAX_AGE:
            await self._read_store(driver)
        return generate_latest(self.registry)

    async def _read_store(self, driver: StorageDriver) -> None:
        # Sessions with their info file: an S3 store (SeaweedFS) may still list emptied folders.
        sessions = 0
        async for info in driver.walk(layout.UPLOADS):
            sessions += info.path.endswith("/info")
        totals = await read_gc_totals(driver)
        self.store_figures = {
            "sessions": sessions,
            "gc_runs": totals.get("runs", 0),
            "gc_freed": totals.get("freed_bytes", 0),
            "gc_last": totals.get("last_run", 0),
        }
        self._store_read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector protocol: the families, built from the counts of this
        process and, in a worker of ``--workers N``, of its live siblings (each series then
        carries ``worker``)."""
        every = sorted([self.counts(), *self.siblings()], key=lambda c: int(c.worker or 0))
        lead = ("worker",) if self.worker is not None else ()

        def labels(counts: Counts, *values: str) -> tuple[str, ...]:
            return (counts.worker, *values) if counts.worker is not None else values

        requests = CounterMetricFamily(
            "pier_http_requests", "HTTP requests answered", labels=(*lead, "route", "method", "status")
        )
        duration = HistogramMetricFamily(
            "pier_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            labels=(*lead, "route", "method"),
        )
        received = CounterMetricFamily(
            "pier_http_received_bytes", "Request body bytes", labels=(*lead, "route")
        )
        sent = CounterMetricFamily("pier_http_sent_bytes", "Response body bytes", labels=(*lead, "route"))
        in_flight = GaugeMetricFamily("pier_http_requests_in_flight", "Requests being served", labels=lead)
        storage = HistogramMetricFamily(
            "pier_storage_operation_duration_seconds",
            "Storage operations (reads: until the first bytes)",
            labels=(*lead, "backend", "operation"),
        )
        errors = CounterMetricFamily(
            "pier_storage_errors",
            "Storage operations that failed (a missing path is an answer, not a failure)",
            labels=(*lead, "backend", "operation"),
        )
        mirror = CounterMetricFamily(
            "pier_mirror_requests",
            "Mirrored manifests and blobs asked for: hit, miss (fetched), stale (upstream down)",
            labels=(*lead, "kind", "result"),
        )
        upstream = CounterMetricFamily(
            "pier_mirror_upstream_errors",
            "Failed requests to upstreams",
            labels=(*lead, "upstream", "reason"),
        )
        for counts in every:
            latency: dict[tuple[str, str], Histogram] = {}
            received_by: dict[str, int] = {}
            sent_by: dict[str, int] = {}
            for (route, method, status), series in sorted(counts.series.items()):
                requests.add_metric(labels(counts, route, method, str(status)), series.count)
                latency.setdefault((route, method), Histogram()).merge(series.latency)
                received_by[route] = received_by.get(route, 0) + series.received
                sent_by[route] = sent_by.get(route, 0) + series.sent
            for (route, method), histogram in sorted(latency.items()):
                duration.add_metric(labels(counts, route, method), histogram.cumulative(), histogram.total)
            for family, values in ((received, received_by), (sent, sent_by)):
                for route, count in sorted(values.items()):
                    if count:
                        family.add_metric(labels(counts, route), count)
            in_flight.add_metric(labels(counts), counts.in_flight)
            for operation, histogram in sorted(counts.storage_latency.items()):
                storage.add_metric(
                    labels(counts, self.backend, operation), histogram.cumulative(), histogram.total
                )
            for operation, count in sorted(counts.storage_errors.items()):
                errors.add_metric(labels(counts, self.backend, operation), count)
            for (kind, result), count in sorted(counts.mirror_requests.items()):
                mirror.add_metric(labels(counts, kind, result), count)
            for (prefix, reason), count in sorted(counts.upstream_errors.items()):
                upstream.add_metric(labels(counts, prefix, reason), count)
        yield from (requests, duration, received, sent, in_flight, storage, errors, mirror, upstream)
        # The store's figures: the same whichever process reads them, so once, without ``worker``.
        figures = self.store_figures
        yield GaugeMetricFamily(
            "pier_upload_sessions_open",
            "Upload sessions open in the store (every replica's)",
            value=figures.get("sessions", 0),
        )
        # The store's totals, kept by every GC run (``pier gc`` and the mirror's eviction).
        yield CounterMetricFamily(
            "pier_gc_runs", "GC runs (not dry runs) on this store", value=figures.get("gc_runs", 0)
        )
        yield CounterMetricFamily(
            "pier_gc_freed_bytes", "Bytes GC deleted from this store", value=figures.get("gc_freed", 0)
        )
        yield GaugeMetricFamily(
            "pier_gc_last_run_timestamp_seconds", "When GC last ran", value=figures.get("gc_last", 0)
        )
