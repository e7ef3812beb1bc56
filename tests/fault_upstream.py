"""A faulty upstream registry for the mirror's fault tests: real HTTP/1.1 on loopback.

Written on plain sockets, not ``http.server``, so that a test decides exactly how a blob's
body breaks: cut off by a close (FIN) or a reset (RST), the right length of wrong bytes, or
a stall with the connection left open. It answers ``GET /v2/`` with 200 and ``GET``/``HEAD``
``/v2/<name>/blobs/<digest>`` for the blobs it is given, with a ``Content-Length`` or
chunked, and records every request.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
from typing import Literal

from .servers import free_port

Fault = Literal["ok", "drop", "reset", "corrupt", "stall"]
PIECE = 256 * 1024  # bytes per send (and per chunk, when chunked)
BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")


def corrupted(body: bytes) -> bytes:
    """The same length, one byte in the middle flipped: a wrong digest, nothing else amiss."""
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]


def cut_point(size: int) -> int:
    """Where a broken body stops: a bit past the half, so inside a chunk when chunked."""
    return size // 2 + 12345


class FaultUpstream:
    """The upstream. ``faults`` are taken by the next blob ``GET``s, one each, in order;
    after them every ``GET`` is answered whole. ``head_faults`` likewise for blob ``HEAD``s,
    where "drop" closes the connection and "stall" holds it, with no answer at all.
    ``pace`` slows a body (seconds per piece)."""

    def __init__(self, *, chunked: bool = False, pace: float = 0.0) -> None:
        self.chunked = chunked
        self.pace = pace
        self.blobs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.head_faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.hangups = 0  # stalled answers whose client closed its end of the connection
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = self._listen()
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @staticmethod
    def _listen() -> socket.socket:
        for attempt in range(3):  # free_port's pick can be taken before the bind (rare)
            try:
                return socket.create_server(("127.0.0.1", free_port()))
            except OSError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, body: bytes, digest: str) -> None:
        self.blobs[digest] = body

    def gets(self, digest: str) -> int:
        """Blob ``GET``s received for ``digest``."""
        with self._lock:
            return sum(1 for method, path in self.requests if method == "GET" and path.endswith(digest))

    def start(self) -> FaultUpstream:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the accept (a close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:  # the listener was closed: stop
                return
            with self._lock:
                self._connections.add(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = connection.recv(65536)
                    if not data or len(head) > 65536:
                        return
                    head += data
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
                with self._lock:
                    self.requests.append((method, target))
                self._answer(connection, method, target)
        except OSError:
            pass  # the mirror hung up, or the test is over
        finally:
            with self._lock:
                self._connections.discard(connection)

    def _answer(self, connection: socket.socket, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            self._send_whole(connection, method, 200, b"{}", "application/json")
            return
        match = BLOB_PATH.match(path)
        if match is None or match["digest"] not in self.blobs:
            error = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
            self._send_whole(connection, method, 404, error, "application/json")
            return
        digest = match["digest"]
        blob = self.blobs[digest]
        if method == "HEAD":  # a size, as registries give one even when they chunk the body
            with self._lock:
                head_fault: Fault = self.head_faults.pop(0) if self.head_faults else "ok"
            if head_fault == "stall":
                self._hold(connection)
            if head_fault in ("drop", "stall"):
                return
            self._send_head(connection, 200, len(blob), "application/octet-stream", digest)
            return
        with self._lock:
            fault: Fault = self.faults.pop(0) if self.faults else "ok"
        body = corrupted(blob) if fault == "corrupt" else blob
        cut = cut_point(len(body)) if fault in ("drop", "reset", "stall") else len(body)
        length = None if self.chunked else len(body)
        self._send_head(connection, 200, length, "application/octet-stream", digest)
        for start in range(0, cut, PIECE):
            piece = body[start : min(start + PIECE, cut)]
            if self.chunked:  # a cut inside a chunk sends its header and only part of its bytes
                whole = body[start : start + PIECE]
                connection.sendall(f"{len(whole):x}\r\n".encode() + piece)
                if len(piece) == len(whole):
                    connection.sendall(b"\r\n")
            else:
                connection.sendall(piece)
            if self.pace and self._stop.wait(self.pace):
                return
        if fault == "ok" or fault == "corrupt":
            if self.chunked:
                connection.sendall(b"0\r\n\r\n")
            return  # closed after the answer, as the headers said
        if fault == "reset":  # RST instead of FIN: SO_LINGER with a zero timeout
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if fault == "stall":
            self._hold(connection)
        # "drop": the connection closes here, mid-body

    def _hold(self, connection: socket.socket) -> None:
        """Send nothing more, keep the connection open until the client closes it (or the test ends)."""
        while not self._stop.is_set():
            readable, _, _ = select.select([connection], [], [], 0.1)
            if readable and not connection.recv(65536):
                with self._lock:
                    self.hangups += 1
                return

    def _send_head(
        self, connection: socket.socket, status: int, length: int | None, kind: str, digest: str = ""
    ) -> None:
        reason = {200: "OK", 404: "Not Found"}[status]
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {kind}", "Connection: close"]
        lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
        if digest:
            lines.append(f"Docker-Content-Digest: {digest}")
        lines.append("Docker-Distribution-API-Version: registry/2.0")
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _send_whole(
        self, connection: socket.socket, method: str, status: int, body: bytes, kind: str
    ) -> None:
        self._send_head(connection, status, len(body), kind)
        if method != "HEAD":
            connection.sendall(body)

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
