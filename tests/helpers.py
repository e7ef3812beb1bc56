"""Helpers shared by the tests: waiting for an event, seeding a registry over plain HTTP,
running ``pier``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import pytest

from .images import ImageIndex
from .servers import REPO_ROOT

T = TypeVar("T")

POLL_INTERVAL = 0.05  # seconds between two looks at a condition: short next to any timeout used


Description = str | Callable[[], str]


def timed_out(timeout: float, what: Description) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: Description = "the condition") -> T:
    """Ask ``predicate()`` again until it is truthy, and return that value.

    For a test that waits for something to happen (a file, a log line, an answer), instead
    of sleeping a fixed time that is too long on a fast machine and too short on a busy one.
    ``what`` names the event in the AssertionError on timeout (a callable: asked only then,
    to show a server's log of that moment, say).
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise timed_out(timeout, what)
        time.sleep(POLL_INTERVAL)
    return value


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]], timeout: float = 10.0, what: Description = "the condition"
) -> T:
    """``wait_until`` for a predicate that must be awaited (an HTTP request of an async client)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await predicate()):
        if loop.time() > deadline:
            raise timed_out(timeout, what)
        await asyncio.sleep(POLL_INTERVAL)
    return value


class Pushable(Protocol):
    """A layout's blob (``images.Blob``) or bytes a test made: what a push reads of one."""

    @property
    def media_type(self) -> str: ...

    @property
    def digest(self) -> str: ...

    def read(self) -> bytes: ...


def push_blob(
    base: str,
    repo: str,
    blob: Pushable,
    headers: dict[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    with httpx.Client(base_url=base, headers=headers, verify=verify) as http:
        if http.head(f"/v2/{repo}/blobs/{blob.digest}").status_code == 200:
            return
        location = http.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        separator = "&" if "?" in location else "?"
        done = http.put(f"{location}{separator}digest={blob.digest}", content=blob.read())
        assert done.status_code == 201, done.text


def push_manifest(
    base: str,
    repo: str,
    reference: str,
    blob: Pushable,
    headers: dict[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    response = httpx.put(
        f"{base}/v2/{repo}/manifests/{reference}",
        content=blob.read(),
        headers={"Content-Type": blob.media_type, **(headers or {})},
        verify=verify,
    )
    assert response.status_code == 201, response.text


def push_index(base: str, repo: str, index: ImageIndex, headers: dict[str, str] | None = None) -> None:
    for image in index.images:
        for blob in image.blobs:
            push_blob(base, repo, blob, headers)
        push_manifest(base, repo, image.digest, image.manifest, headers)
    push_manifest(base, repo, index.tag, index.index, headers)


def run_pier(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``pier ARGS`` as its own process, with ``home`` as PIER_HOME and ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "puller", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PIER_HOME": str(home), **(env or {})},
        cwd=cwd or REPO_ROOT,
        timeout=120,
    )


class TamperingProxy:
    """A registry's front that flips one byte of every blob body it passes on.

    It stands for a corrupting cache or a man in the middle: the client must notice by
    the digest, whatever the status code and headers say.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(self.command, f"{proxy.upstream}{self.path}", headers=headers)
                body = answer.content
                if "/blobs/" in self.path and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file as ``htpasswd -B -C 5`` writes it: "$2y$" bcrypt entries at cost 5."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode().replace('$2b$', '$2y$', 1)}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs of its own at ``mount`` (``options``: ``size=40m``...): a real file system
    that fills up. Unmounted lazily: a server under test may still hold files there."""
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the tests run as root): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize
