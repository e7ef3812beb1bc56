"""Servers the benchmarks start and stop by PID: pier, Debian's docker-registry, and their plumbing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


def family_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children so far (nginx's worker, pier's workers)."""
    total = 0
    for process in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, to tell it apart from a later one with its PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Server:
    def __init__(
        self, label: str, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
    ):
        self.label = label
        self.command = command
        self.port = port
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Server:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env, cwd=REPO_ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.process.returncode}); see {self.log_path}")
            try:
                with _NO_PROXY.open(f"{self.url}/v2/", timeout=1.0) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as error:
                if error.code == 401:  # up, and asking for credentials
                    return self
                time.sleep(0.05)
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not answer within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        family = [(pid, start_time(pid)) for pid in descendants(self.process.pid)]
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid, started in family:  # worker processes left behind, if any: by PID (not reused)
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def distribution_config(root: Path, port: int, access_log: bool = False) -> str:
    return (
        "version: 0.1\n"
        f"log:\n  level: error\n  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        "storage:\n  cache:\n    blobdescriptor: inmemory\n"
        f"  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


def start_distribution(work: Path, access_log: bool = False) -> Server:
    port = free_port()
    config = work / "distribution.yml"
    config.write_text(distribution_config(work / "distribution-data", port, access_log))
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    return Server("distribution", [binary, "serve", str(config)], port, work / "distribution.log").start()
