"""Real servers for tests: started as processes on free loopback ports, stopped by PID."""

from __future__ import annotations

import contextlib
import os
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        self.port = port or free_port()
        self.args = args
        self.env = {**self.storage.env, **(env or {})}
        self.log_path = self.root.parent / f"pier-{self.port}.log"
        self.process: subprocess.Popen | None = None

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
        command = [
            sys.executable,
            "-m",
            "registry",
            "serve",
            "--addr",
            self.host,
            "--root",
            self.storage.location,
            "--access-log",
            "false",
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=REPO_ROOT)
        wait_http(f"{self.url}/v2/", self.process)
        return self

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
