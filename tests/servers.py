"""Real servers for tests: started as processes on free loopback ports, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .storeview import LocalStorage, Storage

REPO_ROOT = Path(__file__).resolve().parent.parent


# Ports for the servers the tests start. A port the kernel hands out (bind to 0) is in its
# ephemeral range, where any process's next outgoing connection may take it, and where the
# other pytest-xdist workers draw theirs too: between the pick and the server's own bind, it
# can be gone. So the ports come from below that range (nothing takes them unasked), each
# process from a block of its own (the first for a run without xdist, then gw0, gw1, ...),
# starting at a random place in it (two runs at once rarely meet) and skipping ports in use.
PORTS_FROM = 10000
PORT_BLOCK = 2000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...; unset without xdist
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    blocks = max(1, (_ephemeral_start() - PORTS_FROM) // PORT_BLOCK)
    start = PORTS_FROM + (index % blocks) * PORT_BLOCK
    return range(start, start + PORT_BLOCK)


_block = _port_block()
_next_port = _block.start + random.randrange(PORT_BLOCK)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:  # a server listens there, or a closed connection of one still holds it
            return False
    return True


def free_port() -> int:
    """A loopback port no one listens on, from this process's block (see above)."""
    global _next_port
    for _ in range(PORT_BLOCK):
        port = _next_port
        _next_port = _block.start + (port + 1 - _block.start) % PORT_BLOCK
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {_block.start}-{_block.stop - 1}")


def wait_http(url: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1.0, verify=False)  # up is up: certificates are tested elsewhere
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not answer {url} within {timeout}s")


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)


class PierServer:
    """``pier serve`` in its own process, with a log file to read when a test fails."""

    def __init__(
        self,
        root: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        storage: Storage | None = None,
    ):
        """``root`` is the data folder, unless ``storage`` puts the data elsewhere (S3)."""
        self.root = Path(root)
        self.storage = storage or LocalStorage(str(self.root))
        self.port_given = port is not None
        self.port = port or free_port()
        self.args = args
        self.env = {**self.storage.env, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.root.parent / f"pier-{self.port}.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://{self.host}"

    def start(self) -> PierServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
        env.update(self.env)
        first_start = self.process is None
        for attempt in range(3):
            command = [sys.executable, "-m", "registry", "serve", "--addr", self.host]
            command += ["--root", self.storage.location, "--access-log", "false", *self.args]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=REPO_ROOT)
            try:
                wait_http(f"{self.url}/v2/", self.process)
                return self
            except RuntimeError:
                # Another process took the free port before this one bound it (rare: see
                # free_port): a first start on a port of our choosing tries another one.
                lost_port = self.process.poll() is not None and "address already in use" in self.log()
                if not (lost_port and first_start and not self.port_given) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def kill(self) -> None:
        """Die at once, as a crash would: no shutdown handlers run."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self, fragment: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Log lines holding ``fragment``, once there are ``count`` of them or ``timeout`` passed:
        access lines are written in batches (every 0.2 s), after the replies."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if fragment in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


@contextlib.contextmanager
def run_distribution(config: Path, port: int) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) serving ``config`` on ``port``; yields HOST:PORT."""
    import pytest

    executable = shutil.which("docker-registry")
    if executable is None:
        pytest.fail("docker-registry is not installed (Debian: apt-get install docker-registry)")
    process = subprocess.Popen(
        [executable, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)


def serve_refused(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pier serve ARGS`` expected to refuse its settings and exit at once."""
    return subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


@contextlib.contextmanager
def run_round_robin(upstreams: list[str], folder: Path) -> Iterator[str]:
    """Debian's nginx balancing requests (not connections) over ``upstreams``; yields HOST:PORT.

    No keep-alive to the upstreams and no buffering, so consecutive requests of one client
    land on alternating replicas and bodies stream through as they arrive.
    """
    import pytest

    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(executable):
        pytest.fail("nginx is not installed (Debian: apt-get install nginx-light); the replica tests need it")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "".join(f"server {upstream};" for upstream in upstreams)
    temp = "".join(f"{name}_temp_path {folder / name}; " for name in ("fastcgi", "uwsgi", "scgi", "proxy"))
    config = folder / "nginx.conf"
    config.write_text(
        f"daemon off; master_process on; worker_processes 1; user root root;\n"
        f"pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log off; client_body_temp_path {folder / 'body'}; {temp}\n"
        f"  upstream replicas {{ {servers} }}\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        "    client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;\n"
        "    proxy_http_version 1.1; proxy_set_header Host $http_host; proxy_next_upstream off;\n"
        "    location / { proxy_pass http://replicas; } }\n"
        "}\n"
    )
    process = subprocess.Popen(
        [executable, "-c", str(config), "-p", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)
