"""Hostile names, tags and methods; load shedding with 429."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from .helpers import wait_until_async
from .oci import error_codes, make_image, push_image, push_manifest, sha256

pytestmark = pytest.mark.backends("filesystem", "s3")


def raw_request(port: int, target: bytes) -> tuple[int, bytes]:
    """Send a request line exactly as given: no client-side normalisation of the path."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


@pytest.mark.parametrize(
    "name",
    [
        "UPPER/case",
        "a//b",
        "-leading",
        "trailing-",
        "a/../b",
        "..",
        "a/./b",
        "a_-b",
        "a" * 256,
        "a%00b",
        "a%20b",
        "/abs/path",
    ],
)
async def test_invalid_repository_names(registry, name: str) -> None:
    status, reply = raw_request(registry.port, f"/v2/{name}/tags/list".encode())
    assert status == 400, reply[:300]
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert b"NAME_INVALID" in body


async def test_nul_byte_in_request_line_is_refused(registry) -> None:
    status, _ = raw_request(registry.port, b"/v2/a\x00b/tags/list")
    assert status == 400


async def test_traversal_through_encoded_paths_is_impossible(registry, client: httpx.AsyncClient) -> None:
    paths = [
        "/v2/%2e%2e/%2e%2e/etc/blobs/sha256:" + "a" * 64,
        "/v2/a/%2e%2e%2f%2e%2e/blobs/uploads/",
        "/v2/..%2f..%2fetc/manifests/latest",
        "/v2//etc/passwd/manifests/latest",
        "/v2/a/manifests/..%2f..%2ftags",
    ]
    for path in paths:
        status, reply = raw_request(registry.port, path.encode())
        assert status in (400, 404), (path, reply[:200])
    assert not (registry.root.parent / "etc").exists()
    assert all(
        path.startswith(("blobs/", "repositories/", "_uploads/", "_audit/", "_stats/"))
        for path in registry.storage.files()
    )


async def test_longest_valid_name_works(client: httpx.AsyncClient) -> None:
    name = "/".join(["n" * 63] * 4)  # 255 characters
    assert len(name) == 255
    image = make_image(layer_sizes=(10,))
    await push_image(client, name, image)
    assert (await client.get(f"/v2/{name}/manifests/latest")).status_code == 200


@pytest.mark.parametrize("tag", ["-dash", ".dot", "a" * 129, "with:colon", "sp ace"])
async def test_invalid_tags(client: httpx.AsyncClient, repo: str, tag: str) -> None:
    image = make_image(layer_sizes=(10,))
    await push_image(client, repo, image)
    response = await push_manifest(client, repo, tag, image.manifest)
    assert response.status_code in (400, 404)
    codes = error_codes(response)
    assert codes[0] in ("TAG_INVALID", "DIGEST_INVALID", "UNSUPPORTED"), codes


async def test_unsupported_method_gets_spec_error(client: httpx.AsyncClient, repo: str) -> None:
    response = await client.request("POST", f"/v2/{repo}/manifests/latest")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
    unknown = await client.get("/v3/")
    assert unknown.status_code == 404
    assert "errors" in unknown.json()


async def test_too_many_requests_answers_429_with_retry_after(start_registry) -> None:
    server = start_registry("--max-inflight-requests", "1")
    release = asyncio.Event()

    async def slow_body():
        yield b"x" * 10
        await release.wait()
        yield b"y" * 10

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        slow = asyncio.create_task(
            http.post(
                "/v2/busy/repo/blobs/uploads/",
                params={"digest": sha256(b"x" * 10 + b"y" * 10)},
                content=slow_body(),
            )
        )

        async def refused() -> httpx.Response | None:
            reply = await http.get("/v2/")
            return reply if reply.status_code == 429 else None

        busy = await wait_until_async(refused, 10, what="/v2/ to answer 429 while the upload holds the place")
        assert busy is not None and busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert error_codes(busy) == ["TOOMANYREQUESTS"]
        release.set()
        assert (await slow).status_code == 201
        assert (await http.get("/v2/")).status_code == 200


async def test_trailing_newlines_never_pass_validation(
    client: httpx.AsyncClient, registry, repo: str
) -> None:
    image = make_image(layer_sizes=(10,))
    await push_image(client, repo, image)
    as_tag = await push_manifest(client, repo, "latest%0A", image.manifest)
    assert error_codes(as_tag) == ["TAG_INVALID"]
    as_param = await client.put(
        f"/v2/{repo}/manifests/{image.digest}",
        params={"tag": "x\n"},
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert error_codes(as_param) == ["TAG_INVALID"]
    as_digest = await client.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(b'x')}%0A", content=b"x")
    assert error_codes(as_digest) == ["DIGEST_INVALID"]
    status, _ = raw_request(registry.port, f"/v2/{repo}%0A/tags/list".encode())
    assert status in (400, 404)
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == ["latest"]


async def test_tag_parameters_are_bounded(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image(layer_sizes=(10,))
    await push_image(client, repo, image)
    response = await client.put(
        f"/v2/{repo}/manifests/{image.digest}",
        params=[("tag", f"t{i}") for i in range(101)],
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert error_codes(response) == ["TAG_INVALID"]
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == ["latest"]


async def test_a_name_prefix_is_not_a_repository(client: httpx.AsyncClient, repo: str) -> None:
    await push_image(client, f"{repo}/child", make_image(layer_sizes=(10,)))
    response = await client.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


async def test_storage_failure_answers_in_the_spec_format(start_registry) -> None:
    server = start_registry()
    async with httpx.AsyncClient(base_url=server.url) as http:
        image = make_image(layer_sizes=(10,))
        await push_image(http, "broken/store", image)
        # The stored manifest link is replaced by garbage: the server must not crash or leak a trace.
        links = server.storage.files("repositories/broken/store/_manifests/revisions")
        server.storage.write(next(path for path in links if path.endswith("/link")), b"\x00not json")
        response = await http.get("/v2/broken/store/manifests/latest")
        assert response.status_code == 500
        assert error_codes(response) == ["UNKNOWN"]
        assert "Traceback" not in response.text
        assert (await http.get("/v2/")).status_code == 200
