"""A blob GET read straight off its socket: the fast path for multi-GB bodies.

httpx hands a body on in 64 KiB pieces, each passing through h11's buffer: measured here,
about 2.3 CPU-seconds per GiB before a byte is hashed or written, which on a 2-core
machine is what limits a model pull. This sends the same GET (with the transport's
credentials) on a connection of its own and reads the body with ``recv_into`` into one
reused buffer: one copy per byte. It handles only the plain case: a ``200``/``206``
with a ``Content-Length`` and no content or transfer coding, no proxy in the way.
Anything else (a challenge, a redirect to object storage, an error) is answered
``None``, and the caller goes through httpx, which knows the rest of HTTP.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from ..text import printable

MAX_HEAD = 64 * 1024
DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() takes "²", which int() refuses
HANDLED = (200, 206)


class RawBodyLost(OSError):
    """The connection broke while the body was read."""


class RawResponse:
    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], start: bytes) -> None:
        self._sock = sock
        self.status_code = status
        self.headers = headers
        self.length = int(headers["content-length"])
        self._start = start  # body bytes that came with the head
        self.received = 0

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` as far as the body goes (fewer bytes only at its end); 0 at the end."""
        want = min(len(buffer), self.length - self.received)
        filled = 0
        if self._start and want:
            taken = self._start[:want]
            buffer[: len(taken)] = taken
            self._start = self._start[len(taken) :]
            filled = len(taken)
        while filled < want:
            try:
                count = self._sock.recv_into(buffer[filled:want])
            except OSError as exc:
                raise RawBodyLost(f"connection lost after {self.received + filled} bytes: {exc}") from None
            if count == 0:
                raise RawBodyLost(f"the body ended at byte {self.received + filled} of {self.length}")
            filled += count
        self.received += filled
        return filled

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytearray]:
        """The body in pieces of ``chunk_size`` (1 MiB), as httpx's responses give it."""
        size = chunk_size or 1 << 20
        while self.received < self.length:
            piece = bytearray(min(size, self.length - self.received))
            self.readinto(memoryview(piece))
            yield piece

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not DIGITS.fullmatch(parts[1]):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def open_raw(
    base_url: str,
    path: str,
    headers: dict[str, str],
    context: ssl.SSLContext,
    timeout: float,
) -> RawResponse | None:
    """GET ``path`` on its own connection; None when the answer needs more than this reads."""
    url = urlsplit(base_url)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if host is None or (urllib.request.getproxies() and not urllib.request.proxy_bypass(host)):
        return None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        return _exchange(sock, url.scheme == "https", host, url.netloc, path, headers, context)
    except BaseException:
        sock.close()
        raise


def _exchange(
    sock: socket.socket,
    tls: bool,
    host: str,
    netloc: str,
    path: str,
    headers: dict[str, str],
    context: ssl.SSLContext,
) -> RawResponse | None:
    try:
        if tls:
            sock = context.wrap_socket(sock, server_hostname=host)
        authority = netloc.rsplit("@", 1)[-1]
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {authority}",
            "Connection: close",
            "Accept-Encoding: identity",
        ]
        lines += [f"{name}: {printable(value, 8192)}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = _read_head(sock)
    except (OSError, UnicodeEncodeError):
        sock.close()
        return None
    if answer is None:
        sock.close()
        return None
    status, response_headers, start = answer
    plain = (
        status in HANDLED
        and DIGITS.fullmatch(response_headers.get("content-length", "")) is not None
        and response_headers.get("transfer-encoding", "identity").lower() == "identity"
        and response_headers.get("content-encoding", "identity").lower() == "identity"
    )
    if not plain:
        sock.close()
        return None
    return RawResponse(sock, status, response_headers, start)
