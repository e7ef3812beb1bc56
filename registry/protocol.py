"""uvicorn's httptools protocol with the limits it lacks: header size, and stalled peers.

httptools keeps appending URL and header bytes for as long as a client sends them, and
uvicorn waits forever for the first byte of a new connection, for the rest of a header
block, and for a body that stops arriving. Each connection here has a budget of header
bytes and a watchdog: headers must be complete within ``header_timeout`` of the
request's first byte (or of the connection, for the first request), and a request whose
body stalls, or whose client stops reading the response, for ``idle_timeout`` is
closed. Time the server spends working (reading paused, the app busy) never counts
against the client.

It also offers the ASGI extension ``http.response.zerocopysend`` on plain-HTTP connections: an
app hands over an open file and the bytes go from the page cache to the socket with
``sendfile(2)`` in a thread, none through Python (blob downloads; nginx's ``sendfile on``).
And ``pier.response.cut``, on every connection: an app whose body cannot be completed (a
mirror's upstream failed mid-blob) closes the connection, as it must, without uvicorn
logging the app's failure as a crash.

It relies on uvicorn's private httptools protocol (its callbacks and per-connection state), so
pyproject.toml pins uvicorn exactly and tests/test_protocol_pin.py checks every method and
attribute used here, naming the uvicorn version when one is gone. uvicorn's own options do not
replace it: ``h11_max_incomplete_event_size`` bounds headers only with the h11 parser (a 400, no
field count, ~60% more CPU per request here), and ``timeout_keep_alive`` only covers the idle
time between requests: nothing bounds a slow header block or a stalled body. The class costs
about 7% of a manifest HEAD's server CPU (bench figures in the i19 report).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import select
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .http import CUT, ZERO_COPY

log = logging.getLogger("pier.registry")

# sendfile waits for the socket in these threads, one per download in progress: not the default
# pool, which has 6 threads on 2 cores and serves storage I/O.
_SENDFILE = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="sendfile")
# Bytes per sendfile call. Measured on loopback here (1 GiB, page cache warm): 256 KiB calls
# send at ~2.7 GB/s, as nginx does; 1-8 MiB calls, or the whole file in one, at ~1.9 GB/s.
SENDFILE_CHUNK = 256 * 1024
_TOO_LARGE = b"431 Request Header Fields Too Large"
_TIMEOUT = b"408 Request Timeout"


class HeaderLimitExceeded(Exception):
    pass


def _error(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn makes one per connection; the limits are class attributes set by ``configure``."""

    max_header_size = 64 * 1024
    max_headers = 100
    header_timeout = 30.0
    idle_timeout = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn types it BaseTransport; it is always a Transport
        super().connection_made(transport)
        self._header_bytes = 0
        self._header_count = 0
        self._unparsed = 0  # bytes fed since the parser last made progress (ended headers, gave body)
        self._progressed = False
        self._limit_hit = False
        self._reading_headers = True  # from a request's first byte (or the connection) to its headers' end
        self._in_body = False  # from the end of the headers to the end of the body
        self._headers_deadline = self.loop.time() + self.header_timeout
        self._last_activity = self.loop.time()
        self._write_paused_since: float | None = None
        self._write_buffered = 0  # bytes waiting for the client at the last check
        self._reply_then_close: bytes | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._arm_watchdog()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        self._progressed = False
        super().data_received(data)
        # httptools buffers a header, or a chunked trailer, until it is complete: bytes that
        # moved the parser no further are held to the header budget here, so an endless one
        # is cut off before it ends.
        if self._progressed or not (self._reading_headers or self._in_body) or self.transport.is_closing():
            return
        self._unparsed += len(data)
        if self._unparsed > self.max_header_size:
            self._limit_hit = True
            self.send_400_response("")

    def _progress(self) -> None:
        self._progressed = True
        self._unparsed = 0

    # -- header budget --------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._header_count = 0
        self._reading_headers = True
        self._headers_deadline = self.loop.time() + self.header_timeout

    def _spend(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_size or self._header_count > self.max_headers:
            self._limit_hit = True
            raise HeaderLimitExceeded  # stops the parser; uvicorn then calls send_400_response

    def on_url(self, url: bytes) -> None:
        self._spend(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._spend(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._in_body = True
        self._progress()
        super().on_headers_complete()
        cycle: Any = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[CUT] = {}
            if self._plain_socket() is not None:
                extensions[ZERO_COPY] = {}
            cycle.send = self._zero_copy_send(cycle, cycle.send)

    def _plain_socket(self) -> int | None:
        """The connection's socket, when nothing stands between it and the bytes (no TLS)."""
        if self.transport.get_extra_info("sslcontext") is not None:
            return None
        sock = self.transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    def _zero_copy_send(self, cycle: Any, send: Any) -> Any:
        async def zero_copy_send(message: Any) -> None:
            if message["type"] == CUT:  # the body cannot be completed: the client must see that
                if not cycle.response_complete:
                    self.transport.close()
                    cycle.disconnected = True  # uvicorn logs nothing more about it
                return
            if message["type"] != ZERO_COPY:
                await send(message)
                return
            if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding:
                raise RuntimeError(f"{ZERO_COPY} needs a started response with a Content-Length")
            count = int(message.get("count", cycle.expected_content_length))
            if count > cycle.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            if count and not cycle.disconnected and await self._flushed():
                sent = await self.loop.run_in_executor(
                    _SENDFILE,
                    _sendfile,
                    self._plain_socket(),
                    message["file"].fileno(),
                    int(message.get("offset", 0)),
                    count,
                    self.idle_timeout,
                )
                cycle.expected_content_length -= sent
                if sent < count:  # the client went or stalled, or the file was short: cut it off
                    log.warning("%s: a file response stopped after %d of %d bytes", self._peer(), sent, count)
                    self.transport.close()
                    cycle.disconnected = True
                    return
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        return zero_copy_send

    async def _flushed(self) -> bool:
        """Wait until what the transport holds (the headers) has reached the socket: sendfile
        writes past the transport, so anything still in its buffer would arrive after."""
        while self.transport.get_write_buffer_size():
            if self.transport.is_closing():
                return False
            await asyncio.sleep(0.001)
        return not self.transport.is_closing()

    def on_body(self, body: bytes) -> None:
        self._progress()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._progress()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._limit_hit:
            super().send_400_response(msg)
            return
        detail = (
            f"request line and headers are limited to {self.max_header_size} bytes, {self.max_headers} fields"
        )
        self._close("request headers over the limit", _error(_TOO_LARGE, "SIZE_INVALID", detail))

    # -- stalled peers -----------------------------------------------------------
    def _arm_watchdog(self) -> None:
        interval = max(0.05, min(self.header_timeout, self.idle_timeout) / 4)
        self._watchdog = self.loop.call_later(interval, self._check_stalled)

    def _check_stalled(self) -> None:
        self._watchdog = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        cycle: Any = self.cycle
        if self._reading_headers:
            if now > self._headers_deadline:
                self._close(
                    "request headers took too long",
                    _error(_TIMEOUT, "TIMEOUT", "request headers took too long"),
                )
                return
        elif self._in_body and not self.flow.read_paused and not cycle.waiting_for_100_continue:
            # The client's turn to send (one waiting for "100 Continue" is waiting for the server).
            if now - self._last_activity > self.idle_timeout:
                self._close("request body stalled")
                return
        elif cycle is not None and not cycle.response_complete:
            self._last_activity = now  # the server's turn: its time never counts against the client
        elif now - self._last_activity > self.timeout_keep_alive + self.idle_timeout:
            # Idle between requests: uvicorn's keep-alive timer normally closes it first.
            self._close("idle between requests")
            return
        buffered = self.transport.get_write_buffer_size()
        if self._write_paused_since is not None and buffered < self._write_buffered:
            self._write_paused_since = now  # slow, but reading: only a client making no progress is cut
        self._write_buffered = buffered
        if self._write_paused_since is not None and now - self._write_paused_since > self.idle_timeout:
            self._close("client stopped reading the response")
            return
        self._arm_watchdog()

    def pause_writing(self) -> None:
        self._write_paused_since = self.loop.time()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._write_paused_since = None
        super().resume_writing()

    def _close(self, reason: str, reply: bytes = b"") -> None:
        log.warning("%s: %s; connection closed", self._peer(), reason)
        cycle: Any = self.cycle
        if reply and cycle is not None and not cycle.response_complete:
            # A pipelined request went wrong while the one before it is still answered:
            # finish that answer, then send this one and close (never one inside the other).
            self._reply_then_close = reply
            self.flow.pause_reading()
            return
        if reply:
            self.transport.write(reply)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._reply_then_close is not None and not self.transport.is_closing():
            self.transport.write(self._reply_then_close)
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


def _sendfile(sock: int | None, file: int, offset: int, count: int, timeout: float) -> int:
    """Bytes of ``file`` sent to the non-blocking ``sock``, waiting for room at most ``timeout``
    seconds at a time; fewer than ``count`` when the client went away or stopped reading."""
    if sock is None:
        return 0
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(sock, file, offset + sent, min(count - sent, SENDFILE_CHUNK))
        except BlockingIOError:
            if not poller.poll(timeout * 1000):
                return sent  # no room for a whole idle_timeout: the client stopped reading
            continue
        except OSError:  # EPIPE, ECONNRESET: the client is gone
            return sent
        if done == 0:  # the file ended early
            return sent
        sent += done
    return sent


def configure(max_header_size: int, max_headers: int, header_timeout: float, idle_timeout: float) -> None:
    """Set the limits for this process (worker processes call it from the app factory)."""
    BoundedHttpToolsProtocol.max_header_size = max_header_size
    BoundedHttpToolsProtocol.max_headers = max_headers
    BoundedHttpToolsProtocol.header_timeout = header_timeout
    BoundedHttpToolsProtocol.idle_timeout = idle_timeout
