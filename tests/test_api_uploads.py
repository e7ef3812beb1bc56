"""Upload sessions: POST+PUT, chunked PATCH, status, cancel, mount, expiry, and sharing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import httpx
import pytest

from .helpers import wait_until_async
from .oci import error_codes, push_blob, sha256
from .storeview import blob_data_path

pytestmark = pytest.mark.backends("filesystem", "s3")


async def start_session(client: httpx.AsyncClient, repo: str, **params: str) -> str:
    response = await client.post(f"/v2/{repo}/blobs/uploads/", params=params)
    assert response.status_code == 202, response.text
    assert response.headers["range"] == "0-0"
    assert response.headers["docker-upload-uuid"]
    return response.headers["location"]


async def test_post_then_put_with_whole_body(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(70_000)
    location = await start_session(client, repo)
    done = await client.put(location, params={"digest": sha256(data)}, content=data)
    assert done.status_code == 201
    assert done.headers["docker-content-digest"] == sha256(data)
    assert (await client.get(f"/v2/{repo}/blobs/{sha256(data)}")).content == data
    # The session is gone once the blob is committed; a late chunk cannot touch the blob.
    assert (await client.get(location)).status_code == 404
    late = await client.patch(
        location, content=b"EVIL", headers={"Content-Range": f"{len(data)}-{len(data) + 3}"}
    )
    assert late.status_code == 404
    assert (await client.get(f"/v2/{repo}/blobs/{sha256(data)}")).content == data


async def test_session_advertises_chunk_min_length(client: httpx.AsyncClient, repo: str) -> None:
    response = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert int(response.headers["oci-chunk-min-length"]) > 0


async def test_chunked_upload_with_status_and_final_chunk(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(3 * 100_000 + 17)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    location = await start_session(client, repo)
    offset = 0
    for chunk in chunks[:-1]:
        response = await client.patch(
            location,
            content=chunk,
            headers={
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert response.status_code == 202, response.text
        offset += len(chunk)
        assert response.headers["range"] == f"0-{offset - 1}"
        location = response.headers["location"]
        status = await client.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{offset - 1}"
    last = chunks[-1]
    done = await client.put(
        location,
        params={"digest": sha256(data)},
        content=last,
        headers={"Content-Range": f"{offset}-{offset + len(last) - 1}"},
    )
    assert done.status_code == 201, done.text
    assert (await client.get(f"/v2/{repo}/blobs/{sha256(data)}")).content == data


async def test_streamed_patch_without_content_range(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(50_000)

    async def body():
        for i in range(0, len(data), 7_000):
            yield data[i : i + 7_000]

    location = await start_session(client, repo)
    response = await client.patch(location, content=body())
    assert response.status_code == 202
    assert response.headers["range"] == f"0-{len(data) - 1}"
    done = await client.put(response.headers["location"], params={"digest": sha256(data)})
    assert done.status_code == 201


async def test_out_of_order_chunk_is_416_with_current_range(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    first = await client.patch(location, content=b"a" * 10, headers={"Content-Range": "0-9"})
    assert first.status_code == 202
    skipped = await client.patch(location, content=b"b" * 10, headers={"Content-Range": "20-29"})
    assert skipped.status_code == 416
    assert skipped.headers["range"] == "0-9"
    assert skipped.headers["location"].endswith(location.rsplit("/", 1)[1])
    repeated = await client.patch(location, content=b"a" * 10, headers={"Content-Range": "0-9"})
    assert repeated.status_code == 416
    malformed = await client.patch(location, content=b"x", headers={"Content-Range": "nonsense"})
    assert malformed.status_code == 416
    assert (await client.get(location)).headers["range"] == "0-9"


async def test_chunk_whose_length_disagrees_is_rolled_back(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    response = await client.patch(location, content=b"x" * 5, headers={"Content-Range": "0-9"})
    assert response.status_code in (400, 416)
    assert (await client.get(location)).headers["range"] == "0-0"
    ok = await client.patch(location, content=b"x" * 10, headers={"Content-Range": "0-9"})
    assert ok.status_code == 202


async def test_truncated_chunk_leaves_session_intact(registry, client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    await client.patch(location, content=b"a" * 100, headers={"Content-Range": "0-99"})
    # A client that promises 1000 bytes, sends 10 and hangs up.
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {registry.host}\r\n"
            "Content-Range: 100-1099\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"b" * 10
        )

    async def intact() -> httpx.Response | None:
        status = await client.get(location)
        return status if status.headers["range"] == "0-99" else None

    status = await wait_until_async(intact, what="the session to show the first 100 bytes only")
    assert status is not None and status.headers["range"] == "0-99"
    rest = b"c" * 50

    async def finish() -> httpx.Response | None:
        done = await client.put(
            location,
            params={"digest": sha256(b"a" * 100 + rest)},
            content=rest,
            headers={"Content-Range": "100-149"},
        )
        # Until the server notices the hang-up, the broken request still holds the session
        # (on S3 its stored size never showed the 10 bytes): 416, and the client tries again.
        return done if done.status_code != 416 else None

    done = await wait_until_async(finish, what="the broken request to let go of the session")
    assert done is not None
    assert done.status_code == 201, done.text


async def test_put_with_wrong_digest_stores_nothing(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    await client.patch(location, content=b"real bytes", headers={"Content-Range": "0-9"})
    wrong = sha256(b"other bytes")
    response = await client.put(location, params={"digest": wrong})
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert (await client.head(f"/v2/{repo}/blobs/{wrong}")).status_code == 404
    assert (await client.head(f"/v2/{repo}/blobs/{sha256(b'real bytes')}")).status_code == 404


async def test_put_without_digest_is_rejected(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    response = await client.put(location)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


async def test_cancel_upload(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, repo)
    await client.patch(location, content=b"abc")
    assert (await client.delete(location)).status_code == 204
    gone = await client.get(location)
    assert gone.status_code == 404
    assert error_codes(gone) == ["BLOB_UPLOAD_UNKNOWN"]
    assert (await client.patch(location, content=b"more")).status_code == 404


async def test_unknown_and_hostile_upload_ids(client: httpx.AsyncClient, repo: str) -> None:
    for upload_id in ["0" * 32, "not-a-uuid", "..", "%2e%2e", "a" * 500]:
        response = await client.get(f"/v2/{repo}/blobs/uploads/{upload_id}")
        assert response.status_code in (404, 400), upload_id
        if response.status_code == 404:
            assert error_codes(response) in (["BLOB_UPLOAD_UNKNOWN"], ["UNSUPPORTED"])


async def test_session_belongs_to_its_repository(client: httpx.AsyncClient, repo: str) -> None:
    location = await start_session(client, f"{repo}/mine")
    upload_id = location.rsplit("/", 1)[1]
    response = await client.patch(f"/v2/{repo}/theirs/blobs/uploads/{upload_id}", content=b"x")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


async def test_sha512_upload_chosen_with_digest_algorithm(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(20_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = await start_session(client, repo, **{"digest-algorithm": "sha512"})
    await client.patch(location, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    done = await client.put(location, params={"digest": digest})
    assert done.status_code == 201
    assert (await client.get(f"/v2/{repo}/blobs/{digest}")).content == data
    refused = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest-algorithm": "md5"})
    assert error_codes(refused) == ["DIGEST_INVALID"]


async def test_cross_repository_mount(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(1000)
    digest = await push_blob(client, f"{repo}/source", data)
    mounted = await client.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"}
    )
    assert mounted.status_code == 201
    assert mounted.headers["location"] == f"/v2/{repo}/target/blobs/{digest}"
    assert (await client.get(f"/v2/{repo}/target/blobs/{digest}")).content == data

    missing = sha256(b"not in the source")
    fallback = await client.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": missing, "from": f"{repo}/source"}
    )
    assert fallback.status_code == 202
    assert "/blobs/uploads/" in fallback.headers["location"]

    # A blob that exists elsewhere but not in `from` is not mounted.
    other = await push_blob(client, f"{repo}/elsewhere", os.urandom(50))
    refused = await client.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": other, "from": f"{repo}/source"}
    )
    assert refused.status_code == 202


async def test_upload_continues_after_restart(start_registry, tmp_path) -> None:
    root = tmp_path / "shared"
    data = os.urandom(200_000)
    server = start_registry(root=root)
    async with httpx.AsyncClient(base_url=server.url) as http:
        location = await start_session(http, "restart/me")
        await http.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
    server.kill()
    again = start_registry(root=root)
    async with httpx.AsyncClient(base_url=again.url) as http:
        assert (await http.get(location)).headers["range"] == "0-99999"
        response = await http.put(
            location,
            params={"digest": sha256(data)},
            content=data[100_000:],
            headers={"Content-Range": f"100000-{len(data) - 1}"},
        )
        assert response.status_code == 201, response.text
        assert (await http.get(f"/v2/restart/me/blobs/{sha256(data)}")).content == data


async def test_two_servers_serve_one_upload_alternately(start_registry, tmp_path) -> None:
    root = tmp_path / "shared"
    one, two = start_registry(root=root), start_registry(root=root)
    data = os.urandom(5 * 64_000)
    async with httpx.AsyncClient() as http:
        location = (await http.post(f"{one.url}/v2/shared/repo/blobs/uploads/")).headers["location"]
        for index, start in enumerate(range(0, len(data), 64_000)):
            server = (one, two)[index % 2]
            chunk = data[start : start + 64_000]
            response = await http.patch(
                f"{server.url}{location}",
                content=chunk,
                headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
            )
            assert response.status_code == 202, response.text
        done = await http.put(f"{two.url}{location}", params={"digest": sha256(data)})
        assert done.status_code == 201, done.text
        for server in (one, two):
            assert (await http.get(f"{server.url}/v2/shared/repo/blobs/{sha256(data)}")).content == data


@pytest.mark.slow  # waits 2.5 s for a session to expire
async def test_abandoned_sessions_expire(start_registry) -> None:
    server = start_registry("--upload-timeout", "1s")
    async with httpx.AsyncClient(base_url=server.url) as http:
        location = await start_session(http, "expiry/repo")
        await http.patch(location, content=b"partial")
        await asyncio.sleep(2.5)  # sleep-ok: the 1 s upload timeout must pass (S3 times are whole seconds)
        response = await http.get(location)
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    assert server.storage.files("_uploads") == {}


@pytest.mark.slow  # kills and starts three servers
async def test_killed_server_leaves_no_partial_blob(start_registry, tmp_path) -> None:
    root = tmp_path / "crash"
    server = start_registry(root=root)
    data = os.urandom(24 * 1024 * 1024)  # the half sent is more than one S3 part
    digest = sha256(data)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"POST /v2/crash/repo/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )

        # Killed once it is writing the half it has: a temporary file, an S3 multipart upload.
        async def writing() -> list[str]:
            return server.storage.incomplete_writes()

        await wait_until_async(writing, what="the server to begin writing the half-sent blob")
        server.kill()
    again = start_registry(root=root)
    async with httpx.AsyncClient(base_url=again.url) as http:
        assert (await http.head(f"/v2/crash/repo/blobs/{digest}")).status_code == 404
    assert not again.storage.exists(blob_data_path(digest))
    visible = set(again.storage.files("blobs")) - set(again.storage.incomplete_writes())
    assert visible == set()  # on disk at most a hidden temporary file, on S3 nothing
    again.stop()
    # What the killed writer left behind (a temporary file, an S3 multipart upload) is purged
    # once it is older than the upload timeout.
    assert again.storage.incomplete_writes()
    purging = start_registry("--upload-timeout", "1s", root=root)

    async def purged() -> bool:
        return not purging.storage.incomplete_writes()

    await wait_until_async(purged, what="the leftovers of the killed writer to be purged")
    assert purging.storage.incomplete_writes() == []


@pytest.mark.slow  # a server with two worker processes
async def test_worker_processes_share_uploads(start_registry) -> None:
    server = start_registry("--workers", "2")
    data = os.urandom(8 * 50_000)
    async with httpx.AsyncClient(base_url=server.url) as http:
        location = await start_session(http, "workers/repo")
        for start in range(0, len(data), 50_000):
            # A new connection per chunk, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(base_url=server.url) as fresh:
                response = await fresh.patch(
                    location,
                    content=data[start : start + 50_000],
                    headers={"Content-Range": f"{start}-{start + 49_999}"},
                )
                assert response.status_code == 202, response.text
        done = await http.put(location, params={"digest": sha256(data)})
        assert done.status_code == 201, done.text
        assert (await http.get(f"/v2/workers/repo/blobs/{sha256(data)}")).content == data
