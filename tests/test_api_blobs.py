"""Blob pull and monolithic push: headers, ranges, digests, deletes, deduplication."""

from __future__ import annotations

import hashlib
import os
import socket

import httpx
import pytest

from .oci import error_codes, push_blob, sha256
from .storeview import blob_data_path

pytestmark = pytest.mark.backends("filesystem", "s3")


async def test_base_endpoint_announces_api_version(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


async def test_monolithic_push_then_get_and_head(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(300_000)
    digest = sha256(data)
    pushed = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert pushed.status_code == 201
    assert pushed.headers["location"] == f"/v2/{repo}/blobs/{digest}"
    assert pushed.headers["docker-content-digest"] == digest

    got = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["docker-content-digest"] == digest
    assert got.headers["content-length"] == str(len(data))

    head = await client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["docker-content-digest"] == digest
    assert head.content == b""


async def test_range_requests(client: httpx.AsyncClient, repo: str) -> None:
    data = bytes(range(256)) * 40
    digest = await push_blob(client, repo, data)
    url = f"/v2/{repo}/blobs/{digest}"

    part = await client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"

    tail = await client.get(url, headers={"Range": "bytes=-5"})
    assert (tail.status_code, tail.content) == (206, data[-5:])

    open_ended = await client.get(url, headers={"Range": f"bytes={len(data) - 3}-"})
    assert (open_ended.status_code, open_ended.content) == (206, data[-3:])

    beyond = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"

    # Syntactically invalid ranges are ignored (RFC 9110): the whole blob comes back.
    for ignored in ("bytes=abc-def", "bytes=20-10", "bytes=\u00b2-", "bytes=" + "9" * 5000 + "-"):
        whole = await client.get(url, headers={b"Range": ignored.encode()})
        assert (whole.status_code, whole.content) == (200, data), ignored


async def test_unknown_blob_is_blob_unknown(client: httpx.AsyncClient, repo: str) -> None:
    response = await client.get(f"/v2/{repo}/blobs/{sha256(b'never pushed')}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]
    head = await client.head(f"/v2/{repo}/blobs/{sha256(b'never pushed')}")
    assert head.status_code == 404


async def test_digest_mismatch_stores_nothing(client: httpx.AsyncClient, registry, repo: str) -> None:
    claimed = sha256(b"the bytes the client claims")
    response = await client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, content=b"other bytes"
    )
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert (await client.head(f"/v2/{repo}/blobs/{claimed}")).status_code == 404
    assert not registry.storage.exists(blob_data_path(claimed))
    assert not registry.storage.exists(blob_data_path(sha256(b"other bytes")))


async def test_malformed_and_unsupported_digests(client: httpx.AsyncClient, repo: str) -> None:
    for digest in ["sha256:abc", "sha256:" + "G" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 64 + "/.."]:
        response = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=b"x")
        assert response.status_code == 400, digest
        assert error_codes(response) == ["DIGEST_INVALID"], digest
    bad_get = await client.get(f"/v2/{repo}/blobs/sha256:1234")
    assert error_codes(bad_get) == ["DIGEST_INVALID"]


async def test_sha512_blobs(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    pushed = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert pushed.status_code == 201
    got = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert got.content == data
    assert got.headers["docker-content-digest"] == digest


async def test_body_shorter_than_content_length_stores_nothing(
    registry, client: httpx.AsyncClient, repo: str
) -> None:
    data = b"twelve bytes"
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.sendall(
            f"POST /v2/{repo}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\nHost: {registry.host}\r\n"
            f"Content-Length: {len(data) + 5}\r\n\r\n".encode()
            + data
        )
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        reply = sock.recv(4096)
    assert not reply.startswith(b"HTTP/1.1 201")
    assert (await client.head(f"/v2/{repo}/blobs/{sha256(data)}")).status_code == 404
    assert not registry.storage.exists(blob_data_path(sha256(data)))


async def test_blob_is_stored_once_across_repositories(
    client: httpx.AsyncClient, registry, repo: str
) -> None:
    data = os.urandom(10_000)
    digest = await push_blob(client, f"{repo}/one", data)
    await push_blob(client, f"{repo}/two", data)
    assert registry.storage.read(blob_data_path(digest)) == data
    copies = [path for path, size in registry.storage.files().items() if size == len(data)]
    assert copies == [blob_data_path(digest)]


async def test_repository_reads_only_its_own_blobs(client: httpx.AsyncClient, repo: str) -> None:
    digest = await push_blob(client, f"{repo}/owner", os.urandom(100))
    response = await client.get(f"/v2/{repo}/stranger/blobs/{digest}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


async def test_delete_blob_unlinks_from_repository(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(100)
    digest = await push_blob(client, f"{repo}/a", data)
    await push_blob(client, f"{repo}/b", data)
    deleted = await client.delete(f"/v2/{repo}/a/blobs/{digest}")
    assert deleted.status_code == 202
    assert (await client.get(f"/v2/{repo}/a/blobs/{digest}")).status_code == 404
    assert (await client.get(f"/v2/{repo}/b/blobs/{digest}")).content == data
    again = await client.delete(f"/v2/{repo}/a/blobs/{digest}")
    assert again.status_code == 404
    assert error_codes(again) == ["BLOB_UNKNOWN"]


async def test_blob_size_limit(start_registry, tmp_path) -> None:
    server = start_registry("--max-blob-size", "1KiB")
    async with httpx.AsyncClient(base_url=server.url) as http:
        small = os.urandom(1024)
        assert (await push_blob(http, "limits/x", small)) == sha256(small)
        big = os.urandom(4096)
        response = await http.post("/v2/limits/x/blobs/uploads/", params={"digest": sha256(big)}, content=big)
        assert response.status_code == 413
        assert error_codes(response) == ["SIZE_INVALID"]
        assert (await http.head(f"/v2/limits/x/blobs/{sha256(big)}")).status_code == 404

        start = await http.post("/v2/limits/x/blobs/uploads/")
        location = start.headers["location"]
        first = await http.patch(location, content=os.urandom(1000), headers={"Content-Range": "0-999"})
        assert first.status_code == 202
        second = await http.patch(location, content=os.urandom(100), headers={"Content-Range": "1000-1099"})
        assert second.status_code == 413
        status = await http.get(location)
        assert status.headers["range"] == "0-999"  # the refused chunk left nothing behind
