"""Several ``pier serve`` processes on one store behave as one registry, on disk and on S3.

The replicas share nothing but the store; nginx balances requests (not connections) over
them, so one client's consecutive requests of a push land on alternating replicas.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from .images import build_image
from .layouts import assert_same_layout_content
from .oci import make_image, push_blob, push_manifest, sha256
from .servers import PierServer, run_round_robin
from .skopeo import Skopeo

# slow: nginx in front of several servers, skopeo
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]


@pytest.fixture
def replicas(start_registry, tmp_path):
    """Two replicas on one store and the balancer in front: (replicas, balancer HOST:PORT)."""
    shared = tmp_path / "shared"
    servers = [start_registry("--access-log", "true", root=shared) for _ in range(2)]
    with run_round_robin([server.host for server in servers], tmp_path / "nginx") as host:
        yield servers, host


def test_skopeo_pushes_through_the_balancer_and_pulls_from_each_replica(
    replicas, skopeo: Skopeo, tmp_path
) -> None:
    servers, host = replicas
    balancer = PierServer(tmp_path / "unused", port=int(host.rsplit(":", 1)[1]))
    images = [build_image(tmp_path / f"image{i}", "v1") for i in range(2)]
    for number, image in enumerate(images):
        skopeo.push(image.layout, "v1", f"replicated/app{number}", server=balancer)
    for number, image in enumerate(images):
        for index, server in enumerate(servers):
            out = tmp_path / f"out-{number}-{index}"
            skopeo.pull(f"replicated/app{number}", "v1", out, server=server)
            assert_same_layout_content(image.layout, out, "v1")


async def test_chunked_upload_alternating_replicas_through_the_balancer(replicas) -> None:
    servers, host = replicas
    data = os.urandom(6 * 1024 * 1024 + 123)
    chunk = 1024 * 1024 + 7  # below S3's 5 MiB part: chunks accumulate in storage
    async with httpx.AsyncClient(base_url=f"http://{host}", timeout=60) as http:
        location = (await http.post("/v2/chunked/repo/blobs/uploads/")).headers["location"]
        for start in range(0, len(data), chunk):
            part = data[start : start + chunk]
            response = await http.patch(
                location, content=part, headers={"Content-Range": f"{start}-{start + len(part) - 1}"}
            )
            assert response.status_code == 202, response.text
            assert response.headers["range"] == f"0-{start + len(part) - 1}"
            location = response.headers["location"]
        done = await http.put(location, params={"digest": sha256(data)})
        assert done.status_code == 201, done.text
    async with httpx.AsyncClient(timeout=60) as http:
        for server in servers:
            got = await http.get(f"{server.url}/v2/chunked/repo/blobs/{sha256(data)}")
            assert got.status_code == 200 and got.content == data
            assert len(server.log_lines('"PATCH /v2/chunked/repo/blobs/uploads/', 3)) >= 3  # both took chunks


async def test_concurrent_pushes_of_one_blob_from_both_replicas(replicas) -> None:
    servers, _ = replicas
    data = os.urandom(3 * 1024 * 1024)
    clients = [httpx.AsyncClient(base_url=server.url, timeout=60) for server in servers]
    try:
        pushes = [push_blob(client, f"same/blob{i}", data) for i, client in enumerate(clients * 3)]
        assert set(await asyncio.gather(*pushes)) == {sha256(data)}
        for index, client in enumerate(clients):
            got = await client.get(f"/v2/same/blob{index}/blobs/{sha256(data)}")
            assert got.content == data
    finally:
        for client in clients:
            await client.aclose()


async def test_no_tag_update_is_lost_across_replicas(replicas) -> None:
    """Each acknowledged tag push is what every replica serves next: last writer wins."""
    servers, _ = replicas
    clients = [httpx.AsyncClient(base_url=server.url, timeout=60) for server in servers]
    try:
        for round_ in range(8):
            writer, reader = clients[round_ % 2], clients[(round_ + 1) % 2]
            image = make_image(layer_sizes=(100,))
            for blob in image.blobs:
                await push_blob(writer, "tags/repo", blob)
            pushed = await push_manifest(writer, "tags/repo", "latest", image.manifest, image.media_type)
            assert pushed.status_code == 201
            got = await reader.get("/v2/tags/repo/manifests/latest", headers={"Accept": image.media_type})
            assert got.headers["docker-content-digest"] == sha256(image.manifest)

        # Concurrent pushes of one tag from both replicas: the tag ends on one of them, whole.
        images = [make_image(layer_sizes=(100,)) for _ in range(6)]
        for image, client in zip(images, clients * 3, strict=True):
            for blob in image.blobs:
                await push_blob(client, "tags/race", blob)
        results = await asyncio.gather(
            *(
                push_manifest(client, "tags/race", "latest", image.manifest, image.media_type)
                for image, client in zip(images, clients * 3, strict=True)
            )
        )
        assert all(result.status_code == 201 for result in results)
        answers = [await client.get("/v2/tags/race/manifests/latest") for client in clients]
        digests = {answer.headers["docker-content-digest"] for answer in answers}
        assert len(digests) == 1 and digests <= {sha256(image.manifest) for image in images}
        assert sha256(answers[0].content) == digests.pop()
    finally:
        for client in clients:
            await client.aclose()
