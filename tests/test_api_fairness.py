"""Fair limits on requests in flight: one client holding slow uploads over real sockets cannot
starve the others, and health, readiness and metrics always answer.

Clients are told apart by address (anonymous; loopback has all of 127.0.0.0/8, so a socket
bound to 127.0.0.2 is another client) or by user name (Basic auth, same address).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from .auth_users import USERS, basic
from .helpers import wait_until_async, write_htpasswd
from .loopback_clients import GREEDY, OTHER_GREEDY, client_from
from .oci import error_codes, make_image, push_image
from .servers import PierServer

pytestmark = pytest.mark.backends("filesystem", "s3")


@contextlib.asynccontextmanager
async def slow_uploads(
    server: PierServer, address: str, count: int, headers: dict[str, str] | None = None
) -> AsyncIterator[None]:
    """``count`` PATCHes from ``address`` announcing 100 MB and trickling a byte every 0.2 s."""
    headers = headers or {}
    writers: list[asyncio.StreamWriter] = []
    async with client_from(server, address, headers=headers) as http:
        locations = []
        for number in range(count):
            started = await http.post(f"/v2/greedy/upload{number}/blobs/uploads/")
            assert started.status_code == 202, started.text
            locations.append(started.headers["location"])
    extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    for location in locations:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(address, 0))
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n{extra}"
            f"Content-Length: 100000000\r\n\r\n".encode()
            + b"x" * 1000
        )
        writers.append(writer)

    async def trickle() -> None:
        while True:
            for writer in list(writers):
                try:
                    writer.write(b"x")
                    await writer.drain()
                except ConnectionError:  # refused (429) and closed by the server: the others go on
                    writers.remove(writer)
            await asyncio.sleep(0.2)  # sleep-ok: the trickle's pace, a byte every 0.2 s, is the slow client

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for writer in writers:
            writer.close()


async def until_status(
    http: httpx.AsyncClient, path: str, status: int, timeout: float = 10.0
) -> httpx.Response:
    """Ask again until the answer has ``status`` (the slow uploads reach the server meanwhile)."""

    async def answer() -> httpx.Response | None:
        reply = await http.get(path)
        return reply if reply.status_code == status else None

    found = await wait_until_async(answer, timeout, what=f"{path} to answer {status}")
    assert found is not None  # for the type checker: wait_until_async returns a truthy value
    return found


def assert_busy(reply: httpx.Response) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["retry-after"] == "1"
    assert error_codes(reply) == ["TOOMANYREQUESTS"]


async def test_one_address_holding_its_share_of_slow_uploads_does_not_starve_others(start_registry) -> None:
    server = start_registry("--max-inflight-requests", "20", "--max-inflight-per-client", "3")
    async with client_from(server, "127.0.0.1") as other:
        image = make_image()
        digest = await push_image(other, "fair/app", image)
        async with slow_uploads(server, GREEDY, 3), client_from(server, GREEDY) as greedy:
            assert_busy(await until_status(greedy, "/v2/", 429))
            assert_busy(await greedy.get("/v2/fair/app/manifests/latest"))
            for path in ("/healthz", "/readyz", "/metrics"):  # never limited, for anyone
                assert (await greedy.get(path)).status_code == 200, path
            assert (await other.get("/v2/")).status_code == 200
            manifest = await other.get("/v2/fair/app/manifests/latest")
            assert manifest.status_code == 200 and manifest.headers["docker-content-digest"] == digest
            assert (await other.get("/healthz")).status_code == 200
        async with client_from(server, GREEDY) as greedy:  # its uploads ended: its places are free
            assert (await until_status(greedy, "/v2/", 200)).status_code == 200


async def test_health_readiness_and_metrics_answer_when_the_server_is_full(start_registry) -> None:
    server = start_registry("--max-inflight-requests", "4", "--max-inflight-per-client", "2")
    async with (
        slow_uploads(server, GREEDY, 2),
        slow_uploads(server, OTHER_GREEDY, 2),
        client_from(server, "127.0.0.1") as other,
    ):
        assert_busy(await until_status(other, "/v2/", 429))  # the process's total is reached
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await other.get(path)).status_code == 200, path
        metrics = (await other.get("/metrics")).text
        assert "pier_http_requests_in_flight 4.0" in metrics  # health and metrics not counted


@pytest.fixture
def two_users(start_registry, tmp_path):
    htpasswd = write_htpasswd(tmp_path / "htpasswd", USERS)
    return start_registry(
        "--htpasswd", str(htpasswd), "--max-inflight-requests", "20", "--max-inflight-per-client", "2"
    )


async def test_a_user_is_one_client_and_another_user_at_the_same_address_is_served(two_users) -> None:
    alice, bob = basic("alice", "wonderland"), basic("bob", "builder")
    async with (
        slow_uploads(two_users, "127.0.0.1", 2, headers=alice),
        client_from(two_users, "127.0.0.1", headers=alice) as as_alice,
        client_from(two_users, "127.0.0.1") as http,
    ):
        assert_busy(await until_status(as_alice, "/v2/", 429))
        assert (await http.get("/v2/", headers=bob)).status_code == 200
        # A wrong password for alice is refused as such, not counted as alice.
        assert (await http.get("/v2/", headers=basic("alice", "guess"))).status_code == 401
        assert (await http.get("/healthz")).status_code == 200


async def in_flight(http: httpx.AsyncClient) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("pier_http_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no pier_http_requests_in_flight in /metrics")


async def test_a_few_clients_each_at_their_share_cannot_fill_the_total(start_registry) -> None:
    # Four clients at their share of 4 could hold all 16 places; the last eighth (2) is kept
    # for clients holding nothing, so the fourth gets only 2 and fresh clients are served.
    server = start_registry("--max-inflight-requests", "16", "--max-inflight-per-client", "4")
    greedy = [f"127.0.0.{n}" for n in range(2, 6)]
    async with contextlib.AsyncExitStack() as stack:
        for address in greedy:
            await stack.enter_async_context(slow_uploads(server, address, 4))
        fresh = await stack.enter_async_context(client_from(server, "127.0.0.10"))

        async def fourteen_in_flight() -> bool:
            return await in_flight(fresh) >= 14

        await wait_until_async(fourteen_in_flight, 10, what="14 requests in flight")
        # Proving that nothing more arrives has no event to wait for: a pause long enough for a
        # PATCH still on its way to arrive (and take a place).
        await asyncio.sleep(0.3)  # sleep-ok: waits for the absence of a late request
        assert await in_flight(fresh) == 14
        assert (await fresh.get("/v2/")).status_code == 200
        another = await stack.enter_async_context(client_from(server, "127.0.0.11"))
        assert (await another.get("/v2/")).status_code == 200
        async with client_from(server, greedy[0]) as at_its_share:
            assert_busy(await at_its_share.get("/v2/"))
