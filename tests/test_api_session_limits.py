"""Open upload sessions are capped per client and in the whole store, not only per repository,
and abandoned sessions expire: they stop counting and their URLs answer 404."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .loopback_clients import GREEDY, client_from
from .oci import error_codes

pytestmark = pytest.mark.backends("filesystem", "s3")

OTHER = "127.0.0.1"


async def open_session(http: httpx.AsyncClient, repo: str) -> httpx.Response:
    return await http.post(f"/v2/{repo}/blobs/uploads/")


def assert_refused(reply: httpx.Response, fragment: str) -> None:
    assert reply.status_code == 429, reply.text
    assert error_codes(reply) == ["TOOMANYREQUESTS"]
    assert int(reply.headers["retry-after"]) > 0
    assert fragment in reply.json()["errors"][0]["detail"]


async def test_sessions_across_many_repositories_hit_the_clients_cap(start_registry) -> None:
    server = start_registry("--max-upload-sessions-per-client", "5", "--max-upload-sessions-total", "100")
    async with client_from(server, GREEDY) as greedy, client_from(server, OTHER) as other:
        locations = []
        for number in range(5):  # one per repository: the per-repository cap never applies
            reply = await open_session(greedy, f"spread/repo{number}")
            assert reply.status_code == 202, reply.text
            locations.append(reply.headers["location"])
        assert_refused(await open_session(greedy, "spread/repo99"), "by you")
        assert (await open_session(other, "spread/repo99")).status_code == 202  # others still can
        assert (await greedy.delete(locations[0])).status_code == 204
        assert (await open_session(greedy, "spread/repo99")).status_code == 202  # its place is free


async def test_sessions_of_many_clients_hit_the_stores_cap(start_registry) -> None:
    server = start_registry("--max-upload-sessions-per-client", "3", "--max-upload-sessions-total", "4")
    async with client_from(server, GREEDY) as greedy, client_from(server, OTHER) as other:
        for number in range(3):
            assert (await open_session(greedy, f"total/repo{number}")).status_code == 202
        assert (await open_session(other, "total/other")).status_code == 202
        assert_refused(await open_session(other, "total/other2"), "on this registry")


@pytest.mark.serial  # opens sessions within their 2 s timeout
@pytest.mark.slow  # waits 3 s for sessions to expire
async def test_expired_sessions_stop_counting_and_their_urls_are_unknown(start_registry) -> None:
    server = start_registry(
        "--upload-timeout",
        "2s",
        "--max-upload-sessions-per-client",
        "2",
        "--max-upload-sessions-total",
        "3",
    )
    async with client_from(server, GREEDY) as greedy, client_from(server, OTHER) as other:
        abandoned = []
        for number in range(2):
            reply = await open_session(greedy, f"expiry/repo{number}")
            assert reply.status_code == 202
            abandoned.append(reply.headers["location"])
        assert (await greedy.patch(abandoned[0], content=b"partial")).status_code == 202
        assert (await open_session(other, "expiry/other")).status_code == 202
        assert_refused(await open_session(greedy, "expiry/repo9"), "by you")
        await asyncio.sleep(3)  # sleep-ok: the 2 s upload timeout must pass; all three expire
        for number in range(2):  # neither the client's nor the store's cap counts them any more
            assert (await open_session(greedy, f"expiry/again{number}")).status_code == 202
        assert (await open_session(other, "expiry/other")).status_code == 202
        for location in abandoned:
            for method in ("GET", "PATCH", "PUT", "DELETE"):
                reply = await greedy.request(method, location, params={"digest": "sha256:" + "0" * 64})
                assert reply.status_code == 404, (method, reply.text)
                assert error_codes(reply) == ["BLOB_UPLOAD_UNKNOWN"]
