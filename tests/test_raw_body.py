"""registry/raw_body.py on a socket pair: what a slow upstream's pieces hold on to, and the
buffer pool's rule that a buffer is reused only once nothing views it."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

from registry.raw_body import BufferPool, RawBody

PIECE = 4 * 1024 * 1024


def test_a_buffer_is_reused_only_once_no_view_of_it_is_left() -> None:
    pool = BufferPool(16)
    first = pool.get()
    piece = memoryview(memoryview(first)[2:10])[1:]  # a client's slice of a slice
    assert pool.get() is not first
    del piece
    assert pool.get() is first and len(first) == 16


def test_a_slow_upstreams_small_pieces_are_copies_and_pin_no_buffer() -> None:
    """Each small piece of a slow upstream would otherwise hold a whole 4 MiB buffer for as
    long as the clients' window keeps it: 64 MiB of window, 1 GiB of memory."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    sent = os.urandom(10 * 300 * 1024)

    def trickle() -> None:  # 300 KiB at a time, with pauses: a slow link
        for start in range(0, len(sent), 300 * 1024):
            theirs.sendall(sent[start : start + 300 * 1024])
            time.sleep(0.05)  # sleep-ok: the pause is the slow link being simulated

    feeder = threading.Thread(target=trickle)
    feeder.start()
    body = RawBody(ours, b"", len(sent), PIECE, 5.0)

    async def read_all() -> list[bytes | memoryview]:
        pieces = []
        while piece := await body.next_piece():
            pieces.append(piece)
        return pieces

    try:
        pieces = asyncio.run(read_all())
    finally:
        feeder.join()
        body.close()
        theirs.close()
    assert b"".join(pieces) == sent
    assert len(pieces) > 1  # it did not wait for a whole piece
    held = [p for p in pieces if isinstance(p, memoryview) and isinstance(p.obj, bytearray)]
    assert held == []  # every small piece is its own bytes
    assert len(body._pool._buffers) == 1  # one buffer, used again for every read
