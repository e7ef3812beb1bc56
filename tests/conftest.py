from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import httpx
import pytest

from .seaweed import SeaweedS3
from .servers import PierServer, free_port, run_distribution
from .skopeo import Skopeo
from .storeview import LocalStorage, S3Storage, Storage
from .tokens import TokenService, distribution_token_config

_names = itertools.count()


# Storage backends: a module (or a test) that should run on several says so with
# ``pytestmark = pytest.mark.backends("filesystem", "s3")``; without the marker, a test using
# ``backend`` (directly or through ``registry``, ``start_registry``, ``new_storage``) runs on
# the filesystem only. The registry's own suites run on both; the client's need no S3.
DEFAULT_BACKENDS = ("filesystem",)
KNOWN_BACKENDS = ("filesystem", "s3")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        backends = marker.args if marker else DEFAULT_BACKENDS
        unknown = set(backends) - set(KNOWN_BACKENDS)
        if unknown or not backends:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: backends must be among {KNOWN_BACKENDS}")
        metafunc.parametrize("backend", backends, indirect=True, scope="session")


# Tiers: ``pytest -m "not slow"`` is the fast tier (the shared core, the storage contract and
# the handlers on the filesystem, the client's units), the plain ``pytest`` the whole suite.
# A module slow as a whole says ``pytestmark = pytest.mark.slow`` and a slow test
# ``@pytest.mark.slow``, each with its reason: the pier CLI as a process per step, runc, fuzzing,
# a wait for a timeout or TTL. Besides, marked here, every test that needs another server than
# pier: S3 (a ``backend`` or ``driver`` parametrized "s3", or SeaweedFS by fixture), skopeo,
# or distribution.
SLOW_FIXTURES = frozenset({"seaweed", "skopeo", "distribution", "token_registry"})


def needs_another_server(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    on_s3 = "s3" in (params.get("backend"), params.get("driver"))
    return on_s3 or not SLOW_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_another_server(item):
            item.add_marker(pytest.mark.slow)


# pytest-xdist runs the suite in several processes (pyproject.toml's addopts: ``-n``). A test
# that measures time against a bound of a few seconds (a deadline, a timeout, a TTL that must
# not have passed yet) is marked ``serial``: it runs while no test of another worker does, so
# their load cannot make it late. Each test, from its setup to its teardown, holds a lock of
# the run: the others share it, a serial one holds it alone. A gate, taken first and briefly,
# keeps the shared holders from starving a serial test that waits. The lock is held only while
# a test runs, so no worker waits for it while holding it. Without xdist every test runs
# alone anyway. (``--dist loadgroup`` could send the serial tests to one worker, but with
# pytest 9.2's node IDs pytest-xdist 3.8 ignores ``xdist_group``: pytest-xdist issue #1386.)
class RunLock:
    def __init__(self, folder: Path) -> None:
        self.gate = os.open(folder / "serial-gate.lock", os.O_RDWR | os.O_CREAT)
        self.lock = os.open(folder / "serial.lock", os.O_RDWR | os.O_CREAT)

    @contextlib.contextmanager
    def held(self, alone: bool) -> Iterator[None]:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)


_run_lock: RunLock | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _run_lock
    if hasattr(config, "workerinput") and config.option.basetemp:  # an xdist worker: its basetemp
        _run_lock = RunLock(Path(config.option.basetemp).parent)  # is in the run's, shared by all


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, object]:
    if _run_lock is None:
        return (yield)
    with _run_lock.held(alone=item.get_closest_marker("serial") is not None):
        return (yield)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def new_storage(request: pytest.FixtureRequest, backend: str) -> Callable[[Path], Storage]:
    """Fresh storage on this run's backend; one folder names one store (replicas share it)."""
    buckets: dict[Path, Storage] = {}

    def make(folder: Path) -> Storage:
        if backend == "filesystem":
            return LocalStorage(str(folder))
        if folder not in buckets:
            seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
            location = f"s3://{seaweed.new_bucket()}/pier"
            buckets[folder] = S3Storage(location, seaweed.env, seaweed.client())
        return buckets[folder]

    return make


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, new_storage) -> Iterator[PierServer]:
    """One pier server shared by the tests that only need the default settings."""
    folder = tmp_path_factory.mktemp("registry") / "data"
    server = PierServer(folder, storage=new_storage(folder)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real S3 server (SeaweedFS) for the session; each user takes a bucket of its own."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def start_registry(tmp_path, new_storage) -> Iterator:
    """Start pier servers with their own settings; all of them stop after the test.

    Servers given the same ``root`` share one store (on S3: one bucket).
    """
    started: list[PierServer] = []

    def start(*args: str, root=None, env=None) -> PierServer:
        folder = root or tmp_path / f"data{len(started)}"
        server = PierServer(folder, *args, env=env, storage=new_storage(folder))
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


@pytest.fixture
def distribution(tmp_path):
    """Debian's docker-registry (distribution 2.8), the reference registry, on loopback."""
    port = free_port()
    config = tmp_path / "distribution.yml"
    root = tmp_path / "distribution"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    with run_distribution(config, port) as host:
        yield host


@pytest.fixture
def token_registry(tmp_path):
    """distribution demanding Bearer tokens from a token service the test runs."""
    tokens = TokenService(tmp_path, users={"alice": "wonderland"}).start()
    port = free_port()
    config = tmp_path / "distribution-token.yml"
    config.write_text(distribution_token_config(tmp_path / "distribution", port, tokens.realm, tokens.bundle))
    try:
        with run_distribution(config, port) as host:
            yield host, tokens
    finally:
        tokens.stop()


@pytest.fixture
def skopeo(registry: PierServer, tmp_path: Path) -> Skopeo:
    executable = shutil.which("skopeo")
    if executable is None:
        pytest.fail("skopeo is not installed (Debian: apt-get install skopeo); these tests need it")
    home = tmp_path / "skopeo-home"
    home.mkdir()
    return Skopeo(executable, home, registry)
