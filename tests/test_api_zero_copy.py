"""Blob downloads over plain HTTP leave the bytes to the kernel (``sendfile``): what reaches the
client is the stored file exactly (whole, ranged, one after another on a keep-alive connection),
a damaged (short) file is cut off rather than padded, and a client that hangs up halfway costs
the server nothing."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .prometheus import metric
from .servers import PierServer

SIZE = 24 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PierServer, bytes, str]]:
    server = PierServer(tmp_path_factory.mktemp("zero-copy") / "data").start()
    data = os.urandom(SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pushed = httpx.post(f"{server.url}/v2/zc/app/blobs/uploads/?digest={digest}", content=data, timeout=60)
    assert pushed.status_code == 201
    try:
        yield server, data, digest
    finally:
        server.stop()


def blob_bytes_sent(server: PierServer) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    try:
        return metric(text, "pier_http_sent_bytes_total", route="/v2/{name}/blobs/{digest}")
    except AssertionError:  # no blob sent yet
        return 0.0


def test_whole_ranged_and_successive_downloads_are_the_stored_bytes(served) -> None:
    server, data, digest = served
    url = f"{server.url}/v2/zc/app/blobs/{digest}"
    before = blob_bytes_sent(server)
    with httpx.Client(timeout=60) as client:  # one keep-alive connection for all of them
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content == data
        for first, last in ((0, 0), (1, 4095), (SIZE - 10, SIZE - 1), (5 << 20, (17 << 20) + 3)):
            part = client.get(url, headers={"range": f"bytes={first}-{last}"})
            assert part.status_code == 206 and part.content == data[first : last + 1]
            assert part.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
        assert client.get(url).content == data
    after = blob_bytes_sent(server)
    ranged = 1 + 4095 + 10 + (12 << 20) + 4
    assert after - before == 2 * SIZE + ranged  # the kernel's bytes are counted too


def test_a_client_hanging_up_halfway_leaves_the_server_serving(served) -> None:
    server, data, digest = served
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET /v2/zc/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 4 << 20:
            received += len(sock.recv(1 << 20))
    # Many of them at once, each gone after its first bytes.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"GET /v2/zc/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.recv(1024)
    again = httpx.get(f"{server.url}/v2/zc/app/blobs/{digest}", timeout=60)
    assert again.status_code == 200 and again.content == data


def test_a_file_cut_short_while_it_is_sent_is_cut_off_never_padded(tmp_path: Path) -> None:
    server = PierServer(tmp_path / "data").start()
    try:
        data = os.urandom(16 << 20)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        pushed = httpx.post(f"{server.url}/v2/zc/short/blobs/uploads/?digest={digest}", content=data)
        assert pushed.status_code == 201
        stored = server.root / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data"
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            sock.settimeout(30)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(f"GET /v2/zc/short/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            reply = sock.recv(64 << 10)
            with open(stored, "r+b") as file:  # the disk loses the file's tail behind pier's back
                file.truncate(1 << 20)
            while chunk := sock.recv(1 << 20):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"content-length: %d" % len(data) in head.lower()
        assert len(body) < len(data) and body == data[: len(body)]  # a prefix of the truth, then the end
    finally:
        server.stop()
