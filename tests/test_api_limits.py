"""Explicit limits with hostile input: header size, stalled and slow peers, upload sessions, JSON depth."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import pytest

from .servers import PierServer

pytestmark = pytest.mark.backends("filesystem", "s3")


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    server = PierServer(
        tmp_path_factory.mktemp("limits") / "data",
        "--max-header-size",
        "8KiB",
        "--max-headers",
        "20",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "1s",
        "--max-upload-sessions",
        "3",
    ).start()
    yield server
    server.stop()


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes exactly as given and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes, float]:
    """Wait for the server to close; returns (closed, what it said, how long it took)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except TimeoutError:
        return False, reply, time.monotonic() - started
    except ConnectionResetError:
        pass
    return True, reply, time.monotonic() - started


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /v2/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(50)) + b"\r\n",
    ],
    ids=["one-huge-header", "huge-url", "too-many-headers"],
)
def test_oversized_headers_get_431_and_the_server_keeps_serving(strict, request_bytes) -> None:
    reply = exchange(strict.port, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), reply[:200]
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"
    assert httpx.get(f"{strict.url}/v2/").status_code == 200


def flood(port: int, preamble: bytes) -> tuple[bool, int]:
    """Send ``preamble`` then an endless run of bytes; (did the server hang up, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(preamble)
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:  # the server must hang up long before this
                sock.sendall(b"a" * 4096)
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, _, _ = closed_within(sock, 5)
    return closed, sent


# Against the default server (30 s header deadline): only the byte budget can cut these off.
@pytest.mark.parametrize(
    "preamble",
    [
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Endless: ",
        b"PATCH /v2/limits/trailers/blobs/uploads/0123 HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: ",
    ],
    ids=["header", "chunked-trailer"],
)
def test_an_endless_header_is_cut_off_before_it_ends(registry, preamble: bytes) -> None:
    closed, sent = flood(registry.port, preamble)
    assert closed
    assert sent < 40 * 1024 * 1024  # at most what the kernel's socket buffers hold (tcp_rmem + tcp_wmem)


def test_a_pipelined_oversized_request_is_answered_after_the_one_before(strict) -> None:
    reply = exchange(
        strict.port,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    )
    first, _, rest = reply.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), reply[:200]
    assert rest.startswith(b"{}HTTP/1.1 431"), rest[:200]  # the 200's body, then the 431


def test_headers_at_the_limit_are_fine(strict) -> None:
    headers = {f"x-h{i}": "v" for i in range(10)}  # httpx adds five of its own
    headers["x-pad"] = "p" * 6000
    assert httpx.get(f"{strict.url}/v2/", headers=headers).status_code == 200


@pytest.mark.serial  # closed within seconds of the 1 s timeout
@pytest.mark.slow  # waits for the 1 s header timeout
def test_a_header_block_sent_slowly_is_cut_off(strict) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a slowloris: a byte now and then, never the blank line
            time.sleep(0.4)  # sleep-ok: the slowloris's pace is what the test sends
            sock.sendall(b"X")
        closed, reply, _ = closed_within(sock, 5)
    assert closed
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


@pytest.mark.serial  # closed within seconds of the 1 s timeout
@pytest.mark.slow  # waits for the 1 s idle timeout
def test_a_connection_that_never_speaks_is_closed(strict) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        closed, _, took = closed_within(sock, 5)
    assert closed and took < 4


@pytest.mark.serial  # closed within seconds of the 1 s timeout
@pytest.mark.slow  # waits for the 1 s idle timeout
def test_a_stalled_upload_is_closed_and_the_session_survives(strict) -> None:
    started = httpx.post(f"{strict.url}/v2/limits/stalled/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["location"]
    try:
        first = os.urandom(1000)
        assert httpx.patch(f"{strict.url}{location}", content=first).status_code == 202
        with socket.create_connection(("127.0.0.1", strict.port)) as sock:
            sock.sendall(
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode() + b"partial"
            )
            closed, _, took = closed_within(sock, 6)
        assert closed and took < 5
        status = httpx.get(f"{strict.url}{location}")
        assert status.status_code == 204
        assert status.headers["range"] == "0-999"  # the complete chunk is kept, the stalled one is not
    finally:
        httpx.delete(f"{strict.url}{location}")


@pytest.mark.serial  # closed within seconds of the 1 s timeout
@pytest.mark.slow  # waits 4 s for the send timeout
def test_a_client_that_stops_reading_a_download_is_closed(strict) -> None:
    blob = os.urandom(32 * 1024 * 1024)
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    pushed = httpx.post(f"{strict.url}/v2/limits/download/blobs/uploads/?digest={digest}", content=blob)
    assert pushed.status_code == 201
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", strict.port))
        sock.sendall(f"GET /v2/limits/download/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # The server's send timeout must pass while nothing is read: no event shows it from here.
        time.sleep(4)  # sleep-ok: read nothing, the server's writes stall until it gives up
        sock.settimeout(10)
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < len(blob)  # cut off, not served to the end
    assert httpx.head(f"{strict.url}/v2/limits/download/blobs/{digest}").status_code == 200


def test_open_upload_sessions_per_repository_are_capped(strict) -> None:
    repo, other = "limits/sessions", "limits/other"
    locations = []
    try:
        for _ in range(3):
            reply = httpx.post(f"{strict.url}/v2/{repo}/blobs/uploads/")
            assert reply.status_code == 202
            locations.append(reply.headers["location"])
        refused = httpx.post(f"{strict.url}/v2/{repo}/blobs/uploads/")
        assert refused.status_code == 429
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert "retry-after" in refused.headers
        elsewhere = httpx.post(f"{strict.url}/v2/{other}/blobs/uploads/")
        assert elsewhere.status_code == 202  # the limit is per repository
        locations.append(elsewhere.headers["location"])

        assert httpx.delete(f"{strict.url}{locations.pop(0)}").status_code == 204
        data = b"finished"
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = httpx.put(f"{strict.url}{locations.pop(0)}?digest={digest}", content=data)
        assert done.status_code == 201
        for _ in range(2):  # a cancelled and a finished session free their places
            reply = httpx.post(f"{strict.url}/v2/{repo}/blobs/uploads/")
            assert reply.status_code == 202
            locations.append(reply.headers["location"])
        assert httpx.post(f"{strict.url}/v2/{repo}/blobs/uploads/").status_code == 429
    finally:
        for location in locations:
            httpx.delete(f"{strict.url}{location}")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_manifest_json_is_refused(strict, depth: int) -> None:
    body = b'{"schemaVersion": 2, "annotations": ' + b"[" * depth + b"]" * depth + b"}"
    reply = httpx.put(
        f"{strict.url}/v2/limits/nested/manifests/v1",
        content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert reply.status_code == 400
    error = reply.json()["errors"][0]
    assert error["code"] == "MANIFEST_INVALID"
    assert "nests deeper than" in error["message"] + str(error["detail"])
