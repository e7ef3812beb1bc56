"""The mirror against a faulty upstream: bodies cut off, corrupt, stalled; clients that leave;
a disk that fills while caching.

What must hold every time: no corrupt blob is ever served whole or stored, the first
client gets a clean error (a truncated body, never the whole body with wrong bytes), the
next request asks the upstream again, and nothing already cached is lost. Each fault runs
on both ways the mirror reads a body: a large one with a ``Content-Length`` straight off
the socket in a thread (``registry/raw_body.py``), a small or chunked one through aiohttp.
"""

from __future__ import annotations

import functools
import hashlib
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from registry.upstream_client import RAW_MIN

from .fault_upstream import Fault, FaultUpstream, cut_point
from .helpers import free_bytes, tmpfs, wait_until
from .images import sha256
from .servers import PierServer
from .storeview import blob_data_path

# slow: a pier and an upstream per test, bodies of 32-64 MiB, an upstream timeout to wait for
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LARGE = 32 * MiB  # read by raw_body, off the event loop
SMALL = 2 * MiB  # read through aiohttp
# name: (body size, chunked upstream)
PATHS = {"raw": (LARGE, False), "aiohttp": (SMALL, False), "chunked": (SMALL, True)}
NAME = "up/library/app"


@functools.cache
def blob_bytes(size: int) -> bytes:
    """Incompressible bytes, the same for a size in every test (generated once)."""
    return random.Random(size).randbytes(size)


def test_the_sizes_take_the_paths_they_are_named_for() -> None:
    assert SMALL < RAW_MIN <= LARGE


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., FaultUpstream]]:
    """Faulty upstreams, all stopped after the test."""
    started: list[FaultUpstream] = []

    def make(*blobs: bytes, chunked: bool = False, pace: float = 0.0) -> FaultUpstream:
        upstream = FaultUpstream(chunked=chunked, pace=pace)
        for blob in blobs:
            upstream.add(blob, sha256(blob))
        started.append(upstream)
        return upstream.start()

    yield make
    for upstream in started:
        upstream.stop()


def mirror_args(upstream: FaultUpstream, timeout: str = "5s") -> list[str]:
    return ["--proxy", f"up={upstream.url}", "--proxy-timeout", timeout]


@dataclass
class Pulled:
    status: int
    body: bytes = field(repr=False)  # 32 MiB in an assertion message helps nobody
    error: Exception | None = None  # how the transfer ended early, if it did

    @property
    def size(self) -> int:
        return len(self.body)


def pull(server: PierServer, digest: str, timeout: float = 30) -> Pulled:
    """A blob GET read to its end, or to where the connection broke."""
    received = bytearray()
    try:
        with httpx.stream("GET", f"{server.url}/v2/{NAME}/blobs/{digest}", timeout=timeout) as answer:
            for chunk in answer.iter_raw():
                received += chunk
            return Pulled(answer.status_code, bytes(received), None)
    except httpx.TransportError as exc:
        return Pulled(200, bytes(received), exc)


def assert_cut_short(pulled: Pulled, blob: bytes) -> None:
    """A clean failure: never the whole blob; what arrived (with a 200) is less, and said so."""
    if pulled.status != 200:  # failed before the first byte: an error the client can read
        assert pulled.status == 503, (pulled.status, pulled.body[:300])
        return
    assert pulled.error is not None, f"the body ended without an error after {pulled.size} bytes"
    assert pulled.size < len(blob), "the whole body arrived"


def assert_pulled_whole(server: PierServer, blob: bytes) -> None:
    pulled = pull(server, sha256(blob))
    assert pulled.error is None and pulled.status == 200, (pulled.status, pulled.error)
    assert len(pulled.body) == len(blob) and pulled.body == blob


def blob_files(server: PierServer) -> list[Path]:
    return sorted((server.root / "blobs").glob("*/*/*/data"))


def corrupt_blobs(server: PierServer) -> list[str]:
    """Stored blobs whose bytes do not hash to the digest their folder names."""
    bad = []
    for data in blob_files(server):
        algorithm, expected = data.parent.parent.parent.name, data.parent.name
        actual = hashlib.new(algorithm, data.read_bytes()).hexdigest()
        if actual != expected:
            bad.append(f"{algorithm}:{expected} holds {data.stat().st_size} bytes hashing to {actual}")
    return bad


def half_written(server: PierServer) -> list[Path]:
    return sorted((server.root / "blobs").rglob(".tmp-*"))


def assert_store_sound(server: PierServer) -> None:
    """Every stored blob is what its digest says, no writer's temporary file is left, and the
    failure was logged as what it is (a warning naming the upstream), not as a crash."""
    assert corrupt_blobs(server) == []
    assert "Traceback" not in server.log() and "Exception in ASGI application" not in server.log()
    wait_until(lambda: not half_written(server), 10, what=lambda: f"no .tmp- files: {half_written(server)}")


def cached(server: PierServer, blob: bytes) -> bool:
    return server.storage.exists(blob_data_path(sha256(blob)))


def path_params(*names: str) -> list[object]:
    return [pytest.param(*PATHS[name], id=name) for name in names]


# -- 1. the upstream drops the connection mid-blob -----------------------------------------


@pytest.mark.parametrize(
    "size, chunked, how",
    [
        pytest.param(LARGE, False, "drop", id="raw-close"),
        pytest.param(LARGE, False, "reset", id="raw-reset"),
        pytest.param(SMALL, False, "drop", id="aiohttp-close"),
        pytest.param(SMALL, False, "reset", id="aiohttp-reset"),
        pytest.param(SMALL, True, "drop", id="chunked-close"),
    ],
)
def test_a_dropped_upstream_cuts_the_client_short_with_a_true_prefix_and_the_next_pull_retries(
    start_registry, make_upstream, size: int, chunked: bool, how: Fault
) -> None:
    """Half a blob and a closed connection: the client learns of it (a short body), and what
    it got is the blob's start; the next pull downloads again, and the third is a cache hit."""
    blob = blob_bytes(size)
    digest = sha256(blob)
    upstream = make_upstream(blob, chunked=chunked)
    upstream.faults = [how]
    mirror = start_registry(*mirror_args(upstream))

    first = pull(mirror, digest)
    assert_cut_short(first, blob)
    assert blob.startswith(first.body), "bytes that are not the blob's were served"
    assert len(first.body) <= cut_point(size)
    assert upstream.gets(digest) == 1
    assert not cached(mirror, blob)

    assert_pulled_whole(mirror, blob)  # the upstream behaves now
    assert upstream.gets(digest) == 2
    assert cached(mirror, blob)
    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == 2  # from the cache
    assert_store_sound(mirror)


def test_curl_sees_a_partial_file_when_the_upstream_drops_a_large_blob(
    start_registry, make_upstream, tmp_path: Path
) -> None:
    """A real client's view of a cut body: curl's exit 18 (partial file), not a success."""
    blob = blob_bytes(LARGE)
    digest = sha256(blob)
    upstream = make_upstream(blob)
    upstream.faults = ["drop"]
    mirror = start_registry(*mirror_args(upstream))
    url = f"{mirror.url}/v2/{NAME}/blobs/{digest}"
    out = tmp_path / "blob"
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-o", str(out), url], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 18, (done.returncode, done.stderr)
    got = out.read_bytes() if out.exists() else b""
    assert len(got) < LARGE and blob.startswith(got)

    again = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "60", "-o", str(out), url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert again.returncode == 0, again.stderr
    assert sha256(out.read_bytes()) == digest
    assert upstream.gets(digest) == 2
    assert_store_sound(mirror)


@pytest.mark.parametrize("size, chunked", path_params("raw", "chunked"))
def test_every_client_following_a_dropped_download_is_cut_short(
    start_registry, make_upstream, size: int, chunked: bool
) -> None:
    """Clients sharing one download share its failure: each gets a true prefix and an error,
    none waits forever or gets the rest from somewhere wrong."""
    blob = blob_bytes(size)
    digest = sha256(blob)
    pieces = size // (256 * 1024)
    upstream = make_upstream(blob, chunked=chunked, pace=3.0 / pieces)  # the cut after ~1.5 s
    upstream.faults = ["drop"]
    mirror = start_registry(*mirror_args(upstream))
    results: list[Pulled] = []

    def follow() -> None:
        results.append(pull(mirror, digest))

    threads = [threading.Thread(target=follow) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3
    for pulled in results:
        assert_cut_short(pulled, blob)
        assert blob.startswith(pulled.body)
    assert upstream.gets(digest) == 1  # one download, followed by all three
    assert not cached(mirror, blob)

    upstream.pace = 0.0
    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == 2
    assert_store_sound(mirror)


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_a_head_the_upstream_drops_or_leaves_unanswered_is_a_clean_503_and_is_asked_again(
    start_registry, make_upstream, fault: Fault
) -> None:
    """A HEAD of a cold blob asks the upstream for the size: no answer is UNAVAILABLE, in
    about the proxy timeout, never a made-up size; the next HEAD asks again."""
    blob = blob_bytes(SMALL)
    digest = sha256(blob)
    upstream = make_upstream(blob)
    # aiohttp sends an idempotent request again, once, when the connection closes before an
    # answer (RFC 9112 9.3.1.1): a dropped HEAD is answered by the retry, two are a failure.
    tries = 2 if fault == "drop" else 1
    upstream.head_faults = [fault] * tries
    mirror = start_registry(*mirror_args(upstream, timeout="1s"))
    url = f"{mirror.url}/v2/{NAME}/blobs/{digest}"

    started = time.monotonic()
    refused = httpx.head(url, timeout=30)
    elapsed = time.monotonic() - started
    assert refused.status_code == 503, refused.headers
    assert elapsed < 15, f"a HEAD took {elapsed:.1f} s with a 1 s upstream timeout"
    assert httpx.get(f"{mirror.url}/v2/", timeout=10).status_code == 200

    answered = httpx.head(url, timeout=30)
    assert answered.status_code == 200 and answered.headers["content-length"] == str(len(blob))
    heads = sum(1 for method, path in upstream.requests if method == "HEAD" and path.endswith(digest))
    assert heads == tries + 1 and upstream.gets(digest) == 0
    assert not cached(mirror, blob)  # a HEAD downloads nothing
    assert_pulled_whole(mirror, blob)
    assert_store_sound(mirror)


# -- 2. the right length of the wrong bytes ------------------------------------------------


@pytest.mark.parametrize("size, chunked", path_params("raw", "aiohttp", "chunked"))
def test_a_corrupt_upstream_blob_is_never_served_whole_nor_cached_and_is_asked_for_again(
    start_registry, make_upstream, size: int, chunked: bool
) -> None:
    """One flipped byte: the last byte is held back until the digest checks out, so no client
    ever has the whole (wrong) blob; nothing is cached, so each pull asks the upstream."""
    blob = blob_bytes(size)
    digest = sha256(blob)
    upstream = make_upstream(blob, chunked=chunked)
    upstream.faults = ["corrupt", "corrupt"]
    mirror = start_registry(*mirror_args(upstream))

    for attempt in (1, 2):
        pulled = pull(mirror, digest)
        assert_cut_short(pulled, blob)
        assert len(pulled.body) <= size - 1
        assert upstream.gets(digest) == attempt
        assert not cached(mirror, blob)
        assert_store_sound(mirror)
    assert "arrived as" in mirror.log()

    assert_pulled_whole(mirror, blob)  # repaired
    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == 3
    assert_store_sound(mirror)


# -- 3. an upstream that stalls mid-body ---------------------------------------------------


@pytest.mark.parametrize("size, chunked", path_params("raw", "aiohttp", "chunked"))
def test_a_stalled_upstream_times_out_cuts_the_client_short_and_the_next_pull_retries(
    start_registry, make_upstream, size: int, chunked: bool
) -> None:
    """Half a body, then silence on an open connection: after the proxy timeout (1 s) the
    client's body ends short, the mirror lets go of the connection, and the next pull works."""
    blob = blob_bytes(size)
    digest = sha256(blob)
    upstream = make_upstream(blob, chunked=chunked)
    upstream.faults = ["stall"]
    mirror = start_registry(*mirror_args(upstream, timeout="1s"))

    started = time.monotonic()
    first = pull(mirror, digest)
    elapsed = time.monotonic() - started
    assert_cut_short(first, blob)
    assert blob.startswith(first.body)
    assert elapsed < 15, f"the client waited {elapsed:.1f} s for a 1 s upstream timeout"
    wait_until(lambda: upstream.hangups == 1, 10, what="the mirror closing the stalled connection")
    assert not cached(mirror, blob)

    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == 2
    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == 2
    assert_store_sound(mirror)


# -- 4. the client leaves halfway ----------------------------------------------------------


def read_part_and_leave(server: PierServer, digest: str, wanted: int) -> int:
    """GET the blob on a raw socket, read about ``wanted`` bytes of the answer, then close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        request = f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: {server.host}\r\n\r\n"
        connection.sendall(request.encode())
        got = 0
        while got < wanted:
            data = connection.recv(1024 * 1024)
            if not data:
                break
            got += len(data)
        return got


@pytest.mark.parametrize("size, chunked", path_params("raw", "aiohttp", "chunked"))
def test_a_client_leaving_halfway_leaves_the_server_healthy_and_the_blob_whole(
    start_registry, make_upstream, size: int, chunked: bool
) -> None:
    """The upstream is slow, so the download is still running when the first client hangs
    up: later clients get the whole blob (joined, cached or downloaded anew), never a part."""
    blob = blob_bytes(size)
    digest = sha256(blob)
    pieces = size // (256 * 1024)
    upstream = make_upstream(blob, chunked=chunked, pace=1.5 / pieces)  # about 1.5 s a body
    mirror = start_registry(*mirror_args(upstream))

    got = read_part_and_leave(mirror, digest, size // 3)
    assert got >= size // 3  # it left in the middle, not after the end
    health = httpx.get(f"{mirror.url}/v2/", timeout=10)
    assert health.status_code == 200
    assert httpx.get(f"{mirror.url}/healthz", timeout=10).status_code == 200

    assert_pulled_whole(mirror, blob)
    assert 1 <= upstream.gets(digest) <= 2
    wait_until(lambda: cached(mirror, blob), 10, what="the blob in the cache")
    fetched = upstream.gets(digest)
    assert_pulled_whole(mirror, blob)
    assert upstream.gets(digest) == fetched  # from the cache now
    assert_store_sound(mirror)
    assert "Traceback" not in mirror.log()


# -- 5. the disk fills while caching -------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs: a 64 MiB blob cannot fit."""
    with tmpfs(tmp_path / "disk", "size=40m") as mount:
        yield mount


@pytest.mark.parametrize("chunked", [pytest.param(False, id="raw"), pytest.param(True, id="chunked")])
def test_a_full_disk_while_caching_cuts_the_client_short_and_keeps_what_was_cached(
    start_registry, make_upstream, small_disk: Path, chunked: bool
) -> None:
    """A small blob is cached; a 64 MiB one fills the disk on its way: its client gets a
    short body of true bytes, no part of it is left in the store, and the small blob is
    still served from the cache with the upstream gone."""
    small, big = blob_bytes(SMALL), blob_bytes(64 * MiB)
    upstream = make_upstream(small, big, chunked=chunked)
    # the store is the whole disk; its log is kept beside it, where a full disk cannot cut it
    mirror = start_registry(*mirror_args(upstream), root=small_disk)

    assert_pulled_whole(mirror, small)
    assert cached(mirror, small)

    pulled = pull(mirror, sha256(big))
    assert_cut_short(pulled, big)
    assert big.startswith(pulled.body), "bytes that are not the blob's were served"
    assert upstream.gets(sha256(big)) == 1
    assert not cached(mirror, big)
    assert [path.parent.name for path in blob_files(mirror)] == [sha256(small)[7:]]
    assert_store_sound(mirror)
    assert f"caching {sha256(big)}" in mirror.log()
    # the room the failed write took is given back (no deleted file held open)
    wait_until(
        lambda: free_bytes(small_disk) > 40 * MiB - SMALL - 4 * MiB,
        10,
        what=lambda: f"the disk's room back: {free_bytes(small_disk)} bytes free",
    )

    upstream.stop()
    assert_pulled_whole(mirror, small)
    assert upstream.gets(sha256(small)) == 1
    assert_store_sound(mirror)
