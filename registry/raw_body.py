"""A large plain-HTTP body read straight from its socket, in a thread, into large buffers.

A mirror's cold blob is the one place pier relays a body at the network's speed. Read
through aiohttp, each 256 KiB the kernel hands over passes the event loop three times
(uvloop's read, aiohttp's parser and stream, a join into a piece): about a third of a
cold pull's CPU, on the loop that also serves every other request. Once aiohttp has read
the headers, a body with a ``Content-Length`` and no encoding is bytes on the socket and
nothing else. ``take`` detaches that socket from aiohttp (the connection is closed there,
not reused: a large blob pays nothing for a new connection), and ``RawBody`` reads it
with ``recv_into`` in a worker thread, without the GIL, a piece at a time.

TLS connections stay with aiohttp: their bytes need decrypting by the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

import aiohttp

MIN_PIECE = 256 * 1024  # bytes a piece waits for when the upstream is slower than the reader


class BufferPool:
    """Piece buffers, used again once nothing refers to them.

    A cold blob passes through a gigabyte of pieces; fresh ones would each be new memory to
    fault in and zero (costly in a VM), and freed again. A piece is a memoryview of a pooled
    ``bytearray``. Clients' transports may keep views of it after a ``write`` returns, so a
    buffer is reused only when no view of it is left: a resize of a ``bytearray`` with
    views raises ``BufferError``, which is the test.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffers: list[bytearray] = []

    def get(self) -> bytearray:
        for buffer in self._buffers:
            if _unviewed(buffer):
                return buffer
        buffer = bytearray(self.size)
        self._buffers.append(buffer)
        return buffer


def _unviewed(buffer: bytearray) -> bool:
    try:
        del buffer[-1]  # within the allocation both ways: no copy
    except BufferError:
        return False
    buffer.append(0)
    return True


class RawBody:
    """The rest of a body, ``remaining`` bytes on ``sock``; pieces of up to ``piece_size``."""

    def __init__(
        self, sock: socket.socket, head: bytes, remaining: int, piece_size: int, timeout: float
    ) -> None:
        self._sock = sock
        self._timeout = timeout
        self._head = head  # what aiohttp had read past the headers already
        self._remaining = remaining
        self._pool = BufferPool(piece_size)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes a read still waiting in its thread
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    async def next_piece(self) -> bytes | memoryview:
        """The next piece; ``b""`` at the end. ``ConnectionError`` if the body is cut short."""
        if self._head:
            head, self._head = self._head, b""
            return head
        if not self._remaining:
            return b""
        return await asyncio.to_thread(self._fill)

    def _fill(self) -> memoryview:
        """Block for the first bytes, then take what has arrived, up to a whole piece: a fast
        upstream gives whole pieces, a slow one pieces of ``MIN_PIECE`` without long waits."""
        want = min(self._pool.size, self._remaining)
        view = memoryview(self._pool.get())[:want]
        got = 0
        while got < want:
            try:
                flags = socket.MSG_DONTWAIT if got >= min(MIN_PIECE, want) else 0
                count = self._sock.recv_into(view[got:], 0, flags)
            except BlockingIOError:
                if not flags:  # SO_RCVTIMEO ran out
                    raise TimeoutError(f"the upstream sent nothing for {self._timeout:.0f} s") from None
                break  # nothing more has arrived: hand over what has
            if count == 0:
                raise ConnectionError(
                    f"the upstream closed the connection {self._remaining - got} bytes short"
                )
            got += count
        self._remaining -= got
        if got < self._pool.size // 2:  # a slow upstream's small piece must not pin 4 MiB
            return memoryview(bytes(view[:got]))
        return view[:got]


def take(response: aiohttp.ClientResponse, length: int, piece_size: int, timeout: float) -> RawBody | None:
    """The body as a ``RawBody`` when it is plain bytes on a plain socket; else None (read it
    through aiohttp). Call before reading any of the body; the response is closed by it."""
    if response.headers.get("content-encoding", "identity") != "identity":
        return None
    if "transfer-encoding" in response.headers:
        return None
    connection = response.connection
    transport = connection.transport if connection is not None else None
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    # No await between here and the close: aiohttp reads nothing more from the socket.
    head = response.content.read_nowait(-1)  # what came with the headers
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    response.close()  # aiohttp lets go of its descriptor; ours keeps the connection open
    try:
        # Blocking, with the kernel's receive timeout: a timeout in Python's socket would
        # poll before every read, including the ones that only take what has arrived.
        raw.setblocking(True)
        seconds = max(timeout, 0.001)
        timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    except OSError:
        raw.close()
        raise
    return RawBody(raw, head, length - len(head), piece_size, timeout)
