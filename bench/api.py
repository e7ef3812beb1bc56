#!/usr/bin/env python3
"""pier beside distribution (the reference registry), on loopback, side by side.

Starts ``pier serve`` and Debian's ``docker-registry`` (distribution 2.8) on free loopback
ports with fresh temporary data folders, measures blob pushes and pulls, chunked pushes,
manifest HEAD/GET request rates and pier's memory, prints a table with pier/distribution
ratios, and stops both servers by PID. See bench/README.md.

    .venv/bin/python bench/api.py [--size-mib 1024] [--quick] [--pier-args "--workers 2"]

Clients: pushes use a small keep-alive HTTP/1.1 client in this file that sends the body
with ``socket.sendfile`` (zero copy from the page cache); pulls use ``curl -o /dev/null``;
manifest GETs use ``wrk -t1``; manifest HEADs use ``wrk`` too if it can (Debian's wrk 4.1
cannot: wg/wrk#198), else this file's own one-process uvloop load generator. Before the
servers are measured, the same clients run against trivial servers (a sink that discards
bodies, a canned answer) so each client's own ceiling is printed next to the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from servers import REPO_ROOT, Server, descendants, free_port, start_distribution  # bench/servers.py

if TYPE_CHECKING:
    import asyncio

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
STAMP_LEN = 32  # the last bytes of a blob file are rewritten per repeat: a new digest each time


# -- a minimal HTTP/1.1 client ---------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Http:
    """One keep-alive connection; request bodies may come straight from a file (sendfile)."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        file: BinaryIO | None = None,
        offset: int = 0,
        count: int = 0,
    ) -> Reply:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parts = urlsplit(target)  # distribution answers with absolute Locations
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        if method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {count if file is not None else len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if file is not None:
            sent = self.sock.sendfile(file, offset, count)
            if sent != count:
                raise RuntimeError(f"sendfile sent {sent} of {count} bytes")
        elif body:
            self.sock.sendall(body)
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._recv()
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            if status != 100:
                break
        reply_headers: dict[str, str] = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            reply_headers[key] = (
                f"{reply_headers[key]}, {value.strip()}" if key in reply_headers else value.strip()
            )
        if method == "HEAD" or status in (204, 304):
            data = b""
        elif "chunked" in reply_headers.get("transfer-encoding", "").lower():
            pieces = []
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                pieces.append(self._read_exact(size))
                self._read_exact(2)
            data = b"".join(pieces)
        elif "content-length" in reply_headers:
            data = self._read_exact(int(reply_headers["content-length"]))
        else:
            with contextlib.suppress(ConnectionError):
                while True:
                    self._recv()
            data, self.buf = self.buf, b""
            self.close()
        if reply_headers.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, reply_headers, data)


def expect(reply: Reply, status: int, what: str) -> Reply:
    if reply.status != status:
        raise RuntimeError(f"{what}: HTTP {reply.status} (expected {status}): {reply.body[:300]!r}")
    return reply


def with_query(location: str, query: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}{query}"


# -- servers ---------------------------------------------------------------------------


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_pier(label: str, work: Path, extra: list[str]) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    command = [
        sys.executable,
        "-m",
        "registry",
        "serve",
        "--addr",
        f"127.0.0.1:{port}",
        "--root",
        str(work / f"{label}-data"),
        "--access-log",
        "false",
        "--log-level",
        "warning",
        *extra,
    ]
    return Server(label, command, port, work / f"{label}.log", env).start()


# -- memory ----------------------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """VmRSS of a process and all its descendants, summed, every ``interval`` seconds."""

    def __init__(self, servers: dict[str, Server], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.interval = interval
        self.phase = "idle"
        self.peaks: dict[tuple[str, str], int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            phase = self.phase
            for label, server in self.servers.items():
                pids = [server.pid, *descendants(server.pid)]
                rss = sum(status_kib(pid, "VmRSS") for pid in pids)
                key = (label, phase)
                self.peaks[key] = max(self.peaks.get(key, 0), rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def hwm_kib(self, label: str) -> int:
        server = self.servers[label]
        return sum(status_kib(pid, "VmHWM") for pid in [server.pid, *descendants(server.pid)])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants."""
    total = 0
    for one in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


class CpuAccount:
    """Server CPU seconds per GiB moved, per server and kind of transfer."""

    def __init__(self) -> None:
        self.per_gib: dict[tuple[str, str], list[float]] = {}

    @contextlib.contextmanager
    def measure(self, label: str, kind: str, size: int, server: Server) -> Iterator[None]:
        before = cpu_seconds(server.pid)
        yield
        used = cpu_seconds(server.pid) - before
        self.per_gib.setdefault((label, kind), []).append(used / (size / 1024**3))


# -- blob files ------------------------------------------------------------------------


class BlobFile:
    """A file of random bytes whose last STAMP_LEN bytes differ per variant (per repeat)."""

    def __init__(self, path: Path, size: int, variants: int) -> None:
        self.path = path
        self.size = size
        with open(path, "wb") as out:
            remaining = size
            while remaining:
                piece = min(remaining, 16 * MIB)
                out.write(os.urandom(piece))
                remaining -= piece
        prefix = hashlib.sha256()
        with open(path, "rb") as handle:
            remaining = size - STAMP_LEN
            while remaining:
                chunk = handle.read(min(remaining, 16 * MIB))
                prefix.update(chunk)
                remaining -= len(chunk)
        self.digests = []
        for variant in range(variants):
            hasher = prefix.copy()
            hasher.update(self.stamp(variant))
            self.digests.append(f"sha256:{hasher.hexdigest()}")
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()

    @staticmethod
    def stamp(variant: int) -> bytes:
        return f"pier-bench-variant-{variant:012d}".encode().ljust(STAMP_LEN, b"-")

    def use(self, variant: int) -> str:
        """Rewrite the tail in place (the rest stays in the page cache); return its digest."""
        with open(self.path, "r+b") as out:
            out.seek(self.size - STAMP_LEN)
            out.write(self.stamp(variant))
        return self.digests[variant]

    def close(self) -> None:
        self.handle.close()


# -- operations ------------------------------------------------------------------------


def start_session(http: Http, name: str) -> str:
    reply = expect(http.request("POST", f"/v2/{name}/blobs/uploads/"), 202, "POST upload")
    return reply.headers["location"]


def push_post_put(port: int, name: str, blob: BlobFile, digest: str) -> float:
    """Monolithic push, two requests: POST (empty) then one PUT ?digest= with the whole body."""
    with Http(port) as http:
        started = time.perf_counter()
        location = start_session(http, name)
        reply = http.request(
            "PUT",
            with_query(location, f"digest={digest}"),
            {"Content-Type": "application/octet-stream"},
            file=blob.handle,
            offset=0,
            count=blob.size,
        )
        elapsed = time.perf_counter() - started
    expect(reply, 201, "monolithic PUT")
    return elapsed


def push_single_post(port: int, name: str, blob: BlobFile, digest: str) -> float:
    """Monolithic push, one request: POST /blobs/uploads/?digest= with the whole body."""
    with Http(port) as http:
        started = time.perf_counter()
        reply = http.request(
            "POST",
            f"/v2/{name}/blobs/uploads/?digest={digest}",
            {"Content-Type": "application/octet-stream"},
            file=blob.handle,
            offset=0,
            count=blob.size,
        )
        elapsed = time.perf_counter() - started
    expect(reply, 201, "single-request POST ?digest=")
    return elapsed


def push_chunked(port: int, name: str, blob: BlobFile, digest: str, chunk: int) -> float:
    """POST, PATCH every chunk with Content-Range and Content-Length, then PUT ?digest=."""
    with Http(port) as http:
        started = time.perf_counter()
        location = start_session(http, name)
        for start in range(0, blob.size, chunk):
            length = min(chunk, blob.size - start)
            reply = http.request(
                "PATCH",
                location,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + length - 1}",
                },
                file=blob.handle,
                offset=start,
                count=length,
            )
            location = expect(reply, 202, f"PATCH at {start}").headers["location"]
        reply = http.request("PUT", with_query(location, f"digest={digest}"))
        elapsed = time.perf_counter() - started
    expect(reply, 201, "chunked PUT ?digest=")
    return elapsed


# A blob pulled to /dev/null; prints "status bytes seconds".
CURL_PULL = ["curl", "-s", "--noproxy", "*", "-o", "/dev/null"]
CURL_PULL += ["-w", "%{http_code} %{size_download} %{time_total}"]


def pull_curl(url: str, size: int, headers: dict[str, str] | None = None) -> float:
    result = subprocess.run(
        [
            *CURL_PULL,
            *[arg for key, value in (headers or {}).items() for arg in ("-H", f"{key}: {value}")],
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    code, downloaded, total = result.stdout.split()
    if code != "200" or (size >= 0 and int(downloaded) != size):
        raise RuntimeError(f"pull {url}: HTTP {code}, {downloaded} bytes (expected 200, {size})")
    return float(total)


def push_small(http: Http, name: str, data: bytes) -> dict[str, object]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    location = start_session(http, name)
    expect(
        http.request(
            "PUT",
            with_query(location, f"digest={digest}"),
            {"Content-Type": "application/octet-stream"},
            body=data,
        ),
        201,
        "small blob PUT",
    )
    return {"digest": digest, "size": len(data)}


def push_small_image(port: int, name: str, tag: str) -> str:
    """A config and one layer, then an OCI manifest by tag; returns the manifest's digest."""
    layer = os.urandom(4096)
    with Http(port) as http:
        layer_desc = push_small(http, name, layer)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
            }
        ).encode()
        config_desc = push_small(http, name, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **config_desc},
                "layers": [{"mediaType": OCI_LAYER, **layer_desc}],
            }
        ).encode()
        reply = expect(
            http.request("PUT", f"/v2/{name}/manifests/{tag}", {"Content-Type": OCI_MANIFEST}, body=manifest),
            201,
            "manifest PUT",
        )
        digest = reply.headers["docker-content-digest"]
        got = expect(http.request("GET", f"/v2/{name}/manifests/{tag}", {"Accept": OCI_MANIFEST}), 200, "GET")
        if got.body != manifest:
            raise RuntimeError("manifest GET returned different bytes")
    return digest


def probe_single_post(port: int) -> tuple[bool, str]:
    """Does POST ?digest= with a body create the blob in one request (201)?"""
    data = os.urandom(1024)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    with Http(port) as http:
        reply = http.request(
            "POST",
            f"/v2/probe/single/blobs/uploads/?digest={digest}",
            {"Content-Type": "application/octet-stream"},
            body=data,
        )
    if reply.status == 201:
        return True, "201 Created"
    return False, f"{reply.status} (the body is ignored and an upload session is opened instead)"


# -- wrk -------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def run_wrk(
    url: str,
    method: str,
    seconds: float,
    connections: int,
    lua_dir: Path,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """``wrk -t1``: one client thread, since client and server share the machine's cores."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    command += ["-H", f"Accept: {OCI_MANIFEST}"]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    if method == "HEAD":
        script = lua_dir / "head.lua"
        script.write_text('wrk.method = "HEAD"\n')
        command += ["-s", str(script)]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {out}{result.stderr}")
    stats: dict[str, float] = {"rps": float(match.group(1))}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    stats["errors"] = float(non2xx.group(1)) if non2xx else 0.0
    socket_errors = re.search(r"Socket errors:.*", out)
    if socket_errors:
        stats["errors"] += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    requests = re.search(r"(\d+) requests in", out)
    stats["requests"] = float(requests.group(1)) if requests else 0.0
    for pct in ("50", "99"):
        lat = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        if lat:
            stats[f"p{pct}_ms"] = float(lat.group(1)) * _UNITS[lat.group(2)]
    return stats


def run_hey(url: str, method: str, seconds: float, connections: int, lua_dir: Path) -> dict[str, float]:
    """``hey -cpus 1``: Go's HTTP/1.1 client with keep-alive, limited to one core like wrk -t1."""
    command = ["hey", "-cpus", "1", "-c", str(connections), "-z", f"{seconds:g}s", "-m", method, "-t", "5"]
    command += ["-disable-compression", "-H", f"Accept: {OCI_MANIFEST}", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"hey failed ({result.returncode}): {out}{result.stderr}")
    codes = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = re.search(r"Error distribution:(.*)", out, re.DOTALL)
    error_count = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors.group(1))) if errors else 0
    stats: dict[str, float] = {
        "rps": float(match.group(1)),
        "requests": float(sum(codes.values())),
        "errors": float(sum(n for code, n in codes.items() if code >= 400) + error_count),
    }
    for pct in ("50", "99"):
        lat = re.search(rf"{pct}%% in ([\d.]+) secs".replace("%%", "%"), out)
        if lat:
            stats[f"p{pct}_ms"] = float(lat.group(1)) * 1e3
    return stats


def run_builtin(
    url: str,
    method: str,
    seconds: float,
    connections: int,
    lua_dir: Path,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """This file's own load generator (one uvloop process), for HEAD where wrk cannot."""
    command = [sys.executable, __file__, "--load-generator", method, url, f"{seconds:g}", str(connections)]
    for key, value in (headers or {}).items():
        command += ["--load-header", f"{key}: {value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed ({result.returncode}): {result.stdout}{result.stderr}")
    return json.loads(result.stdout)


class _LoadConnection:
    """One keep-alive connection sending the same request again as soon as each answer ends."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.buf = bytearray()
        self.need: int | None = None
        self.status = 0
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol methods
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None  # set by connection_made, which asyncio calls first
        if self.state["stop"]:
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.transport.write(self.state["request"])

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.status = int(buf[9:12])
                body = 0
                if not self.state["head"] and self.status not in (204, 304):
                    head = bytes(buf[:end]).lower()
                    at = head.find(b"\ncontent-length:")
                    if at < 0:
                        raise RuntimeError("load generator: answer without Content-Length")
                    stop = head.find(b"\r", at)
                    body = int(head[at + 16 : stop if stop >= 0 else len(head)])
                self.need = end + 4 + body
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = None
            state = self.state
            state["latencies"].append(time.perf_counter() - self.started)
            if self.status >= 400:
                state["errors"] += 1
            self.send()
            if not buf:
                return

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.state["stop"]:
            self.state["errors"] += 1

    def eof_received(self) -> None:
        return None

    def pause_writing(self) -> None:
        return None

    def resume_writing(self) -> None:
        return None


def load_generator_main(
    method: str, url: str, seconds: float, connections: int, headers: list[str] | None = None
) -> None:
    import asyncio

    import uvloop

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None  # url is http://host:port/...
    extra = "".join(f"{header}\r\n" for header in headers or [])
    request = (
        f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: {OCI_MANIFEST}\r\n{extra}\r\n"
    ).encode()
    state: dict = {"stop": False, "request": request, "head": method == "HEAD", "latencies": [], "errors": 0}

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for _ in range(connections):
            await loop.create_connection(lambda: _LoadConnection(state), host, port)  # type: ignore[type-var]  # stubs demand a BaseProtocol subclass; uvloop duck-types
        await asyncio.sleep(seconds - (time.perf_counter() - started))
        state["stop"] = True
        elapsed = time.perf_counter() - started
        latencies = sorted(state["latencies"])
        count = len(latencies)
        return {
            "rps": count / elapsed,
            "requests": float(count),
            "errors": float(state["errors"]),
            "p50_ms": latencies[count // 2] * 1e3 if count else 0.0,
            "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1e3 if count else 0.0,
        }

    print(json.dumps(uvloop.run(run())))


def canned_main(port: int) -> None:
    """A trivial, fast HTTP/1.1 server (fixed 400-byte answer) to measure load generators against."""
    import asyncio

    import uvloop

    body = b"{" + b" " * 398 + b"}"
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n"

    class Canned(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                self.transport.write(answer if head.startswith(b"HEAD") else answer + body)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


LOAD_GENERATORS = {"wrk": run_wrk, "hey": run_hey, "builtin": run_builtin}


def wrk_can_head(url: str, lua_dir: Path) -> bool:
    """wrk 4.1 waits for a body after a HEAD answer that has a Content-Length (wg/wrk#198)."""
    try:
        stats = run_wrk(url, "HEAD", 1, 2, lua_dir)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return stats["requests"] > 10 and stats["errors"] == 0


# -- the client's own ceiling ------------------------------------------------------------


def sink_main(port: int, get_file: str) -> None:
    """A trivial HTTP/1.1 server: reads and discards request bodies, serves a file on GET."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def handle(conn: socket.socket) -> None:
        buffer = bytearray(4 * MIB)
        view = memoryview(buffer)
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, rest = pending.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split()[0]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                }
                remaining = int(headers.get("content-length", "0")) - len(rest)
                while remaining > 0:
                    got = conn.recv_into(view[: min(remaining, len(buffer))])
                    if not got:
                        return
                    remaining -= got
                pending = b""
                if method == "GET":
                    with open(get_file, "rb") as handle:
                        size = os.fstat(handle.fileno()).st_size
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                        conn.sendfile(handle)
                elif method in ("POST", "PATCH"):
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nLocation: /upload/x\r\nContent-Length: 0\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- reporting -------------------------------------------------------------------------


def command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (
        (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"
    )


def machine_facts(work: Path) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    git_rev = command_output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "registry", "storage_backends"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    fs = subprocess.run(
        ["df", "--output=fstype", str(work)], capture_output=True, text=True, check=False
    ).stdout
    dirty_note = ", with uncommitted changes in registry/ or storage_backends/" if dirty else ""
    versions = {}
    for package in ("pier", "uvicorn", "starlette", "httptools", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kib / MIB:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pier": f"{versions['pier']} (git {git_rev}{dirty_note})",
        "pier stack": f"uvicorn {versions['uvicorn']}, starlette {versions['starlette']}, "
        f"httptools {versions['httptools']}, uvloop {versions['uvloop']}",
        "distribution": command_output([shutil.which("docker-registry") or "docker-registry", "--version"]),
        "wrk": command_output(["wrk", "-v"]),
        "curl": command_output(["curl", "--version"]).split(" (")[0],
        "data folders": f"{work} ({fs.split()[-1] if fs.split() else '?'})",
    }


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    return f"{text}{unit}"


def verdict(ratio: float | None, target: float, floor: float | None = None) -> str:
    if ratio is None:
        return ""
    if ratio >= target:
        return "met"
    if floor is not None and ratio < floor:
        return f"FAIL (<{floor}x)"
    return "below target"


# -- the benchmark ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=None, help="monolithic blob size (default 1024)")
    parser.add_argument("--chunked-mib", type=int, default=None, help="chunked-push blob size (default 256)")
    parser.add_argument("--chunk-mib", type=int, default=8, help="PATCH chunk size (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement, median reported (3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--pier-args", default="", help='extra flags for pier serve, e.g. "--workers 2"')
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="ARGS",
        help='extra pier configuration for the manifest req/s only (repeatable; default "--workers 2")',
    )
    parser.add_argument("--no-variant", action="store_true", help="measure no extra pier configuration")
    parser.add_argument("--quick", action="store_true", help="256 MiB / 64 MiB blobs, 1 run, 3 s wrk runs")
    parser.add_argument("--tmpdir", default=None, help="where the temporary data folders go")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    parser.add_argument(
        "--head-tool",
        choices=["auto", "wrk", "builtin", "hey"],
        default="auto",
        help="load generator for HEAD: auto = wrk if it can do HEAD, else this file's own (builtin)",
    )
    parser.add_argument("--sink", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--canned", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-generator", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--load-header", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main(int(args.sink[0]), args.sink[1])
        return 0
    if args.canned:
        canned_main(args.canned)
        return 0
    if args.load_generator:
        method, url, seconds, connections = args.load_generator
        load_generator_main(method, url, float(seconds), int(connections), args.load_header)
        return 0

    quick = args.quick
    size = (args.size_mib or (256 if quick else 1024)) * MIB
    chunked_size = (args.chunked_mib or (64 if quick else 256)) * MIB
    chunk = args.chunk_mib * MIB
    repeats = args.repeats or (1 if quick else 3)
    duration = args.duration or (3.0 if quick else 10.0)
    pier_args = shlex.split(args.pier_args)
    variants = [] if args.no_variant else (args.variant if args.variant is not None else ["--workers 2"])
    variants = [v for v in variants if v.strip() and " ".join(shlex.split(v)) not in " ".join(pier_args)]
    for tool in ("docker-registry", "wrk", "curl"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (see bench/README.md)", file=sys.stderr)
            return 2

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pier-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            "size_mib": size // MIB,
            "chunked_mib": chunked_size // MIB,
            "chunk_mib": args.chunk_mib,
            "repeats": repeats,
            "wrk_seconds": duration,
            "connections": args.connections,
            "pier_args": pier_args,
            "variants": variants,
        },
    }

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", flush=True)

    try:
        facts = machine_facts(work)
        results["machine"] = facts
        print("Machine")
        for key, value in facts.items():
            print(f"  {key:13} {value}")
        print(f"  pier flags    {' '.join(pier_args) or '(defaults)'}")
        print()

        phase(f"writing {size // MIB} MiB and {chunked_size // MIB} MiB random blob files")
        big = BlobFile(work / "big.bin", size, 2 * repeats)
        small = BlobFile(work / "chunked.bin", chunked_size, repeats)

        # The clients' own ceiling: the same code against a server that discards bodies.
        phase("client ceiling: pushing to and pulling from a trivial sink")
        sink_port = free_port()
        sink = Server(
            "sink",
            [sys.executable, __file__, "--sink", str(sink_port), str(big.path)],
            sink_port,
            work / "sink.log",
        )
        sink.process = subprocess.Popen(sink.command, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        servers.append(sink)
        wait_port(sink_port)
        ceiling = {
            "push": max(mbps(size, push_post_put(sink_port, "x", big, big.digests[0])) for _ in range(2)),
            "chunked": max(
                mbps(chunked_size, push_chunked(sink_port, "x", small, "d", chunk)) for _ in range(2)
            ),
            "pull": max(mbps(size, pull_curl(f"http://127.0.0.1:{sink_port}/x", size)) for _ in range(2)),
        }
        sink.stop()
        results["client_ceiling_mbps"] = ceiling

        phase("client ceiling: load generators against a trivial canned-answer server")
        canned_port = free_port()
        canned = Server(
            "canned", [sys.executable, __file__, "--canned", str(canned_port)], canned_port, work / "c.log"
        )
        canned.process = subprocess.Popen(canned.command, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        servers.append(canned)
        wait_port(canned_port)
        canned_url = f"http://127.0.0.1:{canned_port}/v2/bench/small/manifests/v1"
        tools = {"GET": "wrk", "HEAD": args.head_tool}
        if args.head_tool == "auto":
            tools["HEAD"] = "wrk" if wrk_can_head(canned_url, work) else "builtin"
            if tools["HEAD"] == "builtin":
                print("    wrk cannot do HEAD (wg/wrk#198: it waits for a body after a HEAD answer with")
                print("    a Content-Length): HEAD uses this file's own uvloop load generator, GET uses wrk")
        elif args.head_tool == "hey" and not shutil.which("hey"):
            raise RuntimeError("--head-tool hey: hey is not installed")
        rate_ceiling = {
            f"{method} {tool}": LOAD_GENERATORS[tool](canned_url, method, 2, args.connections, work)["rps"]
            for method, tool in (("GET", "wrk"), ("HEAD", tools["HEAD"]), ("GET", tools["HEAD"]))
        }
        canned.stop()
        results["client_ceiling_rps"] = rate_ceiling

        phase("starting pier and distribution")
        pier = start_pier("pier", work, pier_args)
        servers.append(pier)
        dist = start_distribution(work)
        servers.append(dist)
        both = {"pier": pier, "distribution": dist}
        single_ok = {label: probe_single_post(server.port) for label, server in both.items()}
        results["single_request_post"] = {
            k: {"supported": v[0], "answer": v[1]} for k, v in single_ok.items()
        }
        dist_single = single_ok["distribution"][0]

        cpu = CpuAccount()
        sampler = MemorySampler(both)
        sampler.start()

        def order(rep: int) -> list[tuple[str, Server]]:
            items = list(both.items())
            return items if rep % 2 == 0 else items[::-1]

        push: dict[str, list[float]] = {"pier": [], "distribution": []}
        push_single: dict[str, list[float]] = {"pier": [], "distribution": []}
        pull: dict[str, list[float]] = {"pier": [], "distribution": []}
        chunked: dict[str, list[float]] = {"pier": [], "distribution": []}

        phase(f"monolithic push, {size // MIB} MiB, POST + one PUT ?digest= with the body, x{repeats}")
        sampler.phase = "push"
        for rep in range(repeats):
            digest = big.use(rep)
            for label, server in order(rep):
                os.sync()
                with cpu.measure(label, "push POST+PUT", size, server):
                    elapsed = push_post_put(server.port, f"bench/post-put-{rep}", big, digest)
                push[label].append(mbps(size, elapsed))
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in push.items()),
                flush=True,
            )

        phase(
            f"monolithic push, {size // MIB} MiB, single-request POST ?digest= (where supported), x{repeats}"
        )
        for rep in range(repeats):
            digest = big.use(repeats + rep)  # content neither server has stored yet
            for label, server in order(rep):
                if not single_ok[label][0]:
                    continue
                os.sync()
                with cpu.measure(label, "push one POST", size, server):
                    elapsed = push_single_post(server.port, f"bench/single-{rep}", big, digest)
                push_single[label].append(mbps(size, elapsed))
            print(
                f"    run {rep + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in push_single.items() if v),
                flush=True,
            )

        phase(f"monolithic pull, {size // MIB} MiB, curl -o /dev/null, x{repeats}")
        sampler.phase = "pull"
        for rep in range(repeats):
            digest = big.digests[rep]
            for label, server in order(rep):
                os.sync()
                url = f"{server.url}/v2/bench/post-put-{rep}/blobs/{digest}"
                with cpu.measure(label, "pull", size, server):
                    elapsed = pull_curl(url, size)
                pull[label].append(mbps(size, elapsed))
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in pull.items()),
                flush=True,
            )
        sampler.phase = "idle"
        hwm = {label: sampler.hwm_kib(label) for label in both}

        phase(f"chunked push, {chunked_size // MIB} MiB in {args.chunk_mib} MiB PATCHes, x{repeats}")
        for rep in range(repeats):
            digest = small.use(rep)
            for label, server in order(rep):
                os.sync()
                with cpu.measure(label, "chunked push", chunked_size, server):
                    elapsed = push_chunked(server.port, f"bench/chunked-{rep}", small, digest, chunk)
                chunked[label].append(mbps(chunked_size, elapsed))
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in chunked.items()),
                flush=True,
            )
        sampler.stop()
        big.close()
        small.close()

        phase("manifest HEAD/GET: pushing a small image (config, 1 layer, OCI manifest) by tag")
        rate_servers: dict[str, Server] = dict(both)
        for index, variant in enumerate(variants):
            label = f"pier {variant}"
            rate_servers[label] = start_pier(
                f"pier-variant-{index}", work, [*pier_args, *shlex.split(variant)]
            )
            servers.append(rate_servers[label])
        for server in rate_servers.values():
            push_small_image(server.port, "bench/small", "v1")
        rates: dict[str, dict[str, list[dict[str, float]]]] = {
            label: {"HEAD": [], "GET": []} for label in rate_servers
        }
        manifest_path = "/v2/bench/small/manifests/v1"
        methods = [m for m in ("HEAD", "GET") if tools[m]]
        phase(
            f"{args.connections} connections, 1 client thread/core, {duration:g} s per run: "
            f"{len(rate_servers)} servers x {'/'.join(methods)} x{repeats} (+1 s warm-up each)"
        )
        for server in rate_servers.values():
            for method in methods:
                LOAD_GENERATORS[tools[method]](
                    f"{server.url}{manifest_path}", method, 1, args.connections, work
                )
        for rep in range(repeats):
            labels = list(rate_servers) if rep % 2 == 0 else list(rate_servers)[::-1]
            for label in labels:
                for method in methods:
                    url = f"{rate_servers[label].url}{manifest_path}"
                    run = LOAD_GENERATORS[tools[method]](url, method, duration, args.connections, work)
                    rates[label][method].append(run)
            print(
                f"    run {rep + 1}: "
                + ", ".join(
                    f"{label} {m} {rates[label][m][-1]['rps']:,.0f}/s" for label in rates for m in methods
                ),
                flush=True,
            )
        cross_check: dict[str, float] = {}
        if tools["HEAD"] != tools["GET"]:
            # HEAD and GET use different tools: measure GET with the HEAD tool too, once, to show
            # how the two tools compare on the same requests.
            seconds = min(duration, 5.0)
            phase(f"cross-check: GET with {tools['HEAD']} as well ({seconds:g} s per server)")
            for label, server in rate_servers.items():
                run = LOAD_GENERATORS[tools["HEAD"]](
                    f"{server.url}{manifest_path}", "GET", seconds, args.connections, work
                )
                cross_check[label] = run["rps"]
        for label, by_method in rates.items():
            for method, runs in by_method.items():
                bad = sum(r["errors"] for r in runs)
                if bad:
                    print(f"    WARNING: {label} {method}: {bad:.0f} non-2xx responses or socket errors")

        # -- the table ----------------------------------------------------------------
        med = statistics.median
        rows: list[tuple[str, float | None, float | None, str, float, float | None]] = []
        single_note = "" if dist_single else " (distribution: POST+PUT)"
        rows.append(
            (
                f"Monolithic push {size // MIB} MiB, POST+PUT (MB/s)",
                med(push["pier"]),
                med(push["distribution"]),
                "2.0x",
                2.0,
                None,
            )
        )
        dist_for_single = med(push_single["distribution"]) if dist_single else med(push["distribution"])
        if push_single["pier"]:
            rows.append(
                (
                    f"Monolithic push {size // MIB} MiB, one POST ?digest={single_note} (MB/s)",
                    med(push_single["pier"]),
                    dist_for_single,
                    "2.0x",
                    2.0,
                    None,
                )
            )
        rows.append(
            (
                f"Monolithic pull {size // MIB} MiB (MB/s)",
                med(pull["pier"]),
                med(pull["distribution"]),
                "1.0x",
                1.0,
                None,
            )
        )
        rows.append(
            (
                f"Chunked push {chunked_size // MIB} MiB / {args.chunk_mib} MiB (MB/s)",
                med(chunked["pier"]),
                med(chunked["distribution"]),
                "1.5x",
                1.5,
                None,
            )
        )
        for label in rate_servers:
            if label == "distribution":
                continue
            suffix = "" if label == "pier" else f" [{label}]"
            for method in methods:
                rows.append(
                    (
                        f"Manifest {method} by tag, {args.connections} conns, {tools[method]} (req/s)"
                        + suffix,
                        med([r["rps"] for r in rates[label][method]]),
                        med([r["rps"] for r in rates["distribution"][method]]),
                        "1.0x (>=0.8x)",
                        1.0,
                        0.8,
                    )
                )

        width = max(60, *(len(r[0]) for r in rows)) + 2

        def line(name: str, pier_text: str, dist_text: str, ratio_text: str, target: str, status: str) -> str:
            return f"{name:{width}}{pier_text:>10}{dist_text:>14}{ratio_text:>8}  {target:14}{status}"

        print()
        print(
            f"Results (median of {repeats}; MB = 10^6 bytes; pier flags: {' '.join(pier_args) or 'defaults'})"
        )
        header = f"{'Measurement':{width}}{'pier':>10}{'distribution':>14}{'ratio':>8}  {'target':14}status"
        print(header)
        print("-" * len(header))
        table = []
        for name, pier_value, dist_value, target_text, target, floor in rows:
            ratio = pier_value / dist_value if pier_value and dist_value else None
            status = verdict(ratio, target, floor)
            ratio_text = f"{ratio:.2f}x" if ratio is not None else "n/a"
            print(line(name, fmt(pier_value), fmt(dist_value), ratio_text, target_text, status))
            table.append(
                {
                    "measurement": name,
                    "pier": pier_value,
                    "distribution": dist_value,
                    "ratio": ratio,
                    "target": target_text,
                    "status": status,
                }
            )
        peak = {
            (label, ph): sampler.peaks.get((label, ph), 0) / 1024 for label in both for ph in ("push", "pull")
        }
        mem_rows = [
            (f"Peak RSS during {size // MIB} MiB pushes (MiB, 50 ms samples)", "push"),
            (f"Peak RSS during {size // MIB} MiB pulls (MiB, 50 ms samples)", "pull"),
        ]
        for name, ph in mem_rows:
            peak_mib = peak[("pier", ph)]
            status = "met" if peak_mib < 200 else "above target"
            print(line(name, fmt(peak_mib), fmt(peak[("distribution", ph)]), "", "< 200 MiB", status))
            table.append(
                {
                    "measurement": name,
                    "pier": peak_mib,
                    "distribution": peak[("distribution", ph)],
                    "target": "< 200 MiB",
                    "status": status,
                }
            )
        name = f"VmHWM after the {size // MIB} MiB transfers (MiB, all processes)"
        pier_hwm, dist_hwm = hwm["pier"] / 1024, hwm["distribution"] / 1024
        status = "met" if pier_hwm < 200 else "above target"
        print(line(name, fmt(pier_hwm), fmt(dist_hwm), "", "< 200 MiB", status))
        table.append(
            {
                "measurement": name,
                "pier": pier_hwm,
                "distribution": dist_hwm,
                "target": "< 200 MiB",
                "status": status,
            }
        )

        print()
        print("Details")
        print(
            f"  client ceiling (same clients against a trivial sink): push {ceiling['push']:,.0f} MB/s, "
            f"chunked {ceiling['chunked']:,.0f} MB/s, pull (curl) {ceiling['pull']:,.0f} MB/s"
        )
        print(
            "  load generator ceiling (req/s against a trivial canned-answer server): "
            + ", ".join(f"{name} {rps:,.0f}" for name, rps in rate_ceiling.items())
        )
        for label, (_supported, answer) in single_ok.items():
            print(f"  single-request POST ?digest= with a body on {label}: {answer}")
        if not dist_single:
            print("  -> distribution does not support it: the comparable form for both is POST then one PUT")
        for title, data in (
            ("push POST+PUT", push),
            ("push one POST", push_single),
            ("pull", pull),
            ("chunked push", chunked),
        ):
            for label, values in data.items():
                if values:
                    print(f"  {title:14} {label:13} runs (MB/s): {', '.join(f'{v:.0f}' for v in values)}")
        for label, by_method in rates.items():
            for method, runs in by_method.items():
                if not runs:
                    continue
                per_run = ", ".join(f"{r['rps']:,.0f}" for r in runs)
                p50 = statistics.median(r.get("p50_ms", 0.0) for r in runs)
                p99 = statistics.median(r.get("p99_ms", 0.0) for r in runs)
                print(
                    f"  {method:4} {label:22} {tools[method]} req/s: {per_run}  "
                    f"(median latency p50 {p50:.2f} ms, p99 {p99:.2f} ms)"
                )
        for kind in ("push POST+PUT", "push one POST", "pull", "chunked push"):
            parts = [
                f"{label} {statistics.median(cpu.per_gib[(label, kind)]):.2f}"
                for label in both
                if (label, kind) in cpu.per_gib
            ]
            print(f"  server CPU seconds per GiB, {kind:14} (median): " + ", ".join(parts))
        if cross_check:
            print(
                f"  GET measured with {tools['HEAD']} too (req/s, one run; compare with wrk GET above): "
                + ", ".join(f"{label} {rps:,.0f}" for label, rps in cross_check.items())
            )
        print(
            f"  memory sampler: {sampler.samples} samples of VmRSS (all processes of a server) every 50 ms; "
            f"load generators ran with 1 thread / 1 core ({os.cpu_count()} cores shared by client and server)"
        )
        print(f"\nTotal time {time.monotonic() - began:.0f} s")

        results.update(
            {
                "table": table,
                "load_generators": tools,
                "get_cross_check_rps": cross_check,
                "server_cpu_seconds_per_gib": {f"{k[0]} {k[1]}": v for k, v in cpu.per_gib.items()},
                "runs": {
                    "push_post_put": push,
                    "push_single_post": push_single,
                    "pull": pull,
                    "chunked": chunked,
                    "manifest": rates,
                },
                "peak_rss_mib": {f"{label} {ph}": v for (label, ph), v in peak.items()},
                "vmhwm_mib": {"pier": pier_hwm, "distribution": dist_hwm},
                "seconds": time.monotonic() - began,
            }
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
