"""``pier serve --workers N``: a scrape of ``/metrics`` shows every worker of the run, whichever
one answers it (registry/workers.py), and nothing of a worker that is gone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from registry.metrics import Counts, Metrics, Series
from registry.workers import WorkerMetrics

from .helpers import wait_until
from .prometheus import metric
from .servers import PierServer

ROUTE = "/v2/_catalog"  # not /v2/: the test's start-up probe asks that one
SNAPSHOT_WAIT = 15.0  # seconds to wait for the workers' snapshots to catch up


def samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """The value of each worker's sample of ``name`` (labels: a subset that must match)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match is None:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            found[got["worker"]] = found.get(got["worker"], 0.0) + float(match.group(2))
    return found


def requests_by_worker(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return samples(text, "pier_http_requests_total", route=ROUTE, method="GET", status="200")


def counted_in_full(url: str, sent: int) -> dict[str, float]:
    """The requests by worker once a scrape counts every one sent (the siblings' figures lag
    up to a second); until then nothing."""
    by_worker = requests_by_worker(url)
    return by_worker if sum(by_worker.values()) == sent else {}


def two_workers(tmp_path: Path) -> PierServer:
    """TMPDIR puts the run folder (``pier-workers-*``) where the test can see it."""
    run = tmp_path / "run"
    run.mkdir()
    return PierServer(tmp_path / "root", "--workers", "2", env={"TMPDIR": str(run)}).start()


def run_folder(server: PierServer) -> Path:
    [folder] = (server.root.parent / "run").glob("pier-workers-*")
    return folder


@pytest.mark.slow  # a server with two worker processes, and waits for their snapshots (every second)
def test_a_scrape_shows_every_worker_and_their_counts_add_up(tmp_path: Path) -> None:
    server = two_workers(tmp_path)
    try:
        sent = 0
        by_worker: dict[str, float] = {}
        for _ in range(10):  # rounds until both workers answered some (the kernel picks)
            for _ in range(20):
                assert httpx.get(f"{server.url}{ROUTE}").status_code == 200  # a new connection each
                sent += 1
            by_worker = wait_until(
                partial(counted_in_full, server.url, sent),
                timeout=SNAPSHOT_WAIT,
                what=lambda: (
                    f"the workers' snapshots to count what was sent: {requests_by_worker(server.url)}"
                ),
            )
            if len(by_worker) == 2 and min(by_worker.values()) > 0:
                break
        assert set(by_worker) == {"0", "1"}, by_worker
        assert min(by_worker.values()) > 0, f"one worker answered all {sent}: {by_worker}"
        assert sum(by_worker.values()) == sent

        # Each scrape may land on the other worker, whose view of its sibling lags up to a second.
        def durations_caught_up() -> str:
            text = httpx.get(f"{server.url}/metrics").text
            durations = samples(text, "pier_http_request_duration_seconds_count", route=ROUTE, method="GET")
            return text if durations == by_worker else ""

        text = wait_until(durations_caught_up, timeout=SNAPSHOT_WAIT, what="the request durations by worker")
        assert set(samples(text, "pier_http_requests_in_flight")) == {"0", "1"}
        # The store's figures are the store's, not a worker's: once, without the label.
        sessions = [line for line in text.splitlines() if line.startswith("pier_upload_sessions_open")]
        assert sessions == ["pier_upload_sessions_open 0.0"]
    finally:
        server.stop()
    assert list((tmp_path / "run").iterdir()) == []  # the parent removed the run folder


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_snapshot(worker: str, pid: int, requests: int) -> bytes:
    series = Series()
    series.count = requests
    return Counts(worker, pid, 0, {(ROUTE, "GET", 200): series}, {}, {}, {}, {}).to_json()


@pytest.mark.slow  # a server with two worker processes
def test_a_worker_that_is_gone_is_not_shown(tmp_path: Path) -> None:
    server = two_workers(tmp_path)
    try:
        folder = run_folder(server)
        gone = dead_pid()
        (folder / "worker-7.json").write_bytes(fake_snapshot("7", gone, 1000))
        # The same file with a live process (this test's): shown, so the fake one is read at all.
        (folder / "worker-8.json").write_bytes(fake_snapshot("8", os.getpid(), 500))
        for _ in range(10):  # whichever worker answers reads the folder
            by_worker = requests_by_worker(server.url)
            assert by_worker.get("8") == 500, by_worker
            assert "7" not in by_worker, by_worker
    finally:
        server.stop()


def test_a_single_process_has_no_worker_label() -> None:
    metrics = Metrics("filesystem")
    metrics.request(ROUTE, "GET", 200, 0.001, 0, 2)
    text = generate_latest(metrics.registry).decode()
    assert metric(text, "pier_http_requests_total", route=ROUTE, method="GET", status="200") == 1
    assert "worker=" not in text


def test_workers_take_the_lowest_free_index_and_a_replacement_takes_the_index_of_the_one_gone(
    tmp_path: Path,
) -> None:
    first, second = (
        WorkerMetrics(str(tmp_path), Metrics("filesystem")),
        WorkerMetrics(str(tmp_path), Metrics("filesystem")),
    )
    first.start()
    second.start()
    try:
        assert (first.index, second.index) == (0, 1)
        first.metrics.request(ROUTE, "GET", 200, 0.001, 0, 2)
        first.publish()
        text = generate_latest(second.metrics.registry).decode()
        assert samples(text, "pier_http_requests_total", route=ROUTE) == {"0": 1.0}
        assert set(samples(text, "pier_http_requests_in_flight")) == {"0", "1"}
        first.close()  # its snapshot goes with it, and its index is free
        assert samples(generate_latest(second.metrics.registry).decode(), "pier_http_requests_total") == {}
        replacement = WorkerMetrics(str(tmp_path), Metrics("filesystem"))
        replacement.start()
        assert replacement.index == 0
        replacement.close()
    finally:
        first.close()
        second.close()


def test_a_garbled_or_misnamed_snapshot_is_skipped_and_metrics_still_render(tmp_path: Path) -> None:
    worker = WorkerMetrics(str(tmp_path), Metrics("filesystem"))
    worker.start()
    try:
        (tmp_path / "worker-5.json").write_bytes(b'{"worker": Infinity, "pid": 1}')  # OverflowError
        (tmp_path / "worker-6.json").write_bytes(b"[" * 100_000)  # RecursionError
        (tmp_path / "worker-7.json").write_bytes(fake_snapshot("9", os.getpid(), 3))  # another's label
        (tmp_path / "worker-8.json").write_bytes(fake_snapshot("8", os.getpid(), 4))
        text = generate_latest(worker.metrics.registry).decode()
        assert samples(text, "pier_http_requests_total", route=ROUTE) == {"8": 4.0}
    finally:
        worker.close()
