"""Nothing truncated is ever stored or served under a digest, on every backend.

A damaged (short) file at a digest's place is not "content that exists": pushing the
same manifest or blob again replaces it. A body cut short never becomes an object.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest

from .helpers import wait_until_async
from .oci import make_image, push_image, sha256
from .servers import PierServer
from .storeview import blob_data_path

pytestmark = pytest.mark.backends("filesystem", "s3")


async def test_a_truncated_manifest_is_replaced_by_a_push_of_the_same_manifest(
    start_registry, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    image = make_image((1024,), annotations={"pad": "x" * 4096})
    first: PierServer = start_registry(root=root)
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
        await push_image(http, "app/m", image, "v1")
    first.stop()  # a fresh process below: no cached copy hides the damage
    first.storage.write(blob_data_path(image.digest), image.manifest[: len(image.manifest) // 2])

    server: PierServer = start_registry(root=root)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        url = f"/v2/app/m/manifests/{image.digest}"
        accept = {"Accept": image.media_type}
        damaged = await http.get(url, headers=accept)
        assert damaged.status_code == 404, "damaged bytes were served under the manifest's digest"
        assert damaged.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

        response = await http.put(
            "/v2/app/m/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
        )
        assert response.status_code == 201, response.text
        for reference in (image.digest, "v1"):
            got = await http.get(f"/v2/app/m/manifests/{reference}", headers=accept)
            assert got.status_code == 200 and got.content == image.manifest
    assert server.storage.read(blob_data_path(image.digest)) == image.manifest


@pytest.mark.parametrize("how", ["monolithic", "chunked"])
async def test_a_truncated_blob_is_replaced_by_a_push_of_the_same_blob(
    registry: PierServer, client: httpx.AsyncClient, repo: str, how: str
) -> None:
    data = os.urandom(300 * 1024)
    digest = sha256(data)
    response = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    registry.storage.write(blob_data_path(digest), data[:1000])

    if how == "monolithic":
        response = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    else:
        location = (await client.post(f"/v2/{repo}/blobs/uploads/")).headers["location"]
        response = await client.patch(location, content=data[:100_000])
        assert response.status_code == 202, response.text
        response = await client.put(
            response.headers["location"], params={"digest": digest}, content=data[100_000:]
        )
    assert response.status_code == 201, response.text

    got = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert got.status_code == 200 and got.content == data
    assert (await client.head(f"/v2/{repo}/blobs/{digest}")).headers["content-length"] == str(len(data))


def send_short_body(port: int, target: str, declared: int, body: bytes) -> None:
    """A request whose connection closes before the body reaches its Content-Length."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        with_answer = sock.recv(65536)  # whatever the server says, if anything
        del with_answer


async def test_a_body_shorter_than_its_content_length_never_becomes_a_blob(start_registry) -> None:
    server: PierServer = start_registry()
    data = os.urandom(9 * 1024 * 1024)  # more than one S3 part: a multipart upload was begun
    digest = sha256(data)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        location = (await http.post("/v2/app/short/blobs/uploads/")).headers["location"]
        target = f"{location}{'&' if '?' in location else '?'}digest={digest}"
        if target.startswith("http"):
            target = "/" + target.split("/", 3)[3]
        await asyncio.to_thread(send_short_body, server.port, target, len(data) + 4096, data)

        async def nothing_incomplete() -> bool:
            return not server.storage.incomplete_writes()

        # Twice, a second apart: on a slow machine a part still in flight can appear after a first
        # empty look; the writer must clean that up too.
        for _ in range(2):
            await wait_until_async(
                nothing_incomplete, what="the short body's writer to clean up after itself"
            )
            await asyncio.sleep(1)  # sleep-ok: nothing signals that no part is still in flight
        await wait_until_async(nothing_incomplete, what="the short body's writer to clean up after itself")
        assert not server.storage.exists(blob_data_path(digest))
        assert (await http.head(f"/v2/app/short/blobs/{digest}")).status_code == 404
