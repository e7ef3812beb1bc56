from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from .servers import PierServer

_names = itertools.count()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PierServer]:
    """One pier server shared by the tests that only need the default settings."""
    server = PierServer(tmp_path_factory.mktemp("registry") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def start_registry(tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    """Start pier servers with their own settings; all of them stop after the test."""
    started: list[PierServer] = []

    def start(*args: str, root=None, env=None) -> PierServer:  # type: ignore[no-untyped-def]
        server = PierServer(root or tmp_path / f"data{len(started)}", *args, env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def client(registry: PierServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as http:
        yield http


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name of its own for each test, so tests on one server never collide."""
    base = request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")
    cleaned = "".join(c for c in base if c.isalnum() or c == "-").strip("-")[:60]
    return f"test/{cleaned}-{next(_names)}"
