"""Moving request bodies into storage: hashed while they stream, in bounded memory.

Bytes arrive from the socket in small pieces; they are gathered into blocks of
``BLOCK`` bytes, and each block is hashed and written in worker threads (both release
the GIL) while the event loop already receives the next one. At most two blocks are
in memory per transfer, whatever the size of the blob. Blocks are small (1 MiB) so that
little work is left when the last byte arrives: the client waits for that tail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from storage_backends import FileWriter

from .errors import RegistryError

BLOCK = 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes | bytearray, /) -> None: ...
    def hexdigest(self) -> str: ...


class BodyTooLarge(Exception):
    pass


async def _process(block: bytearray, writer: FileWriter | None, hasher: Hasher | None) -> None:
    jobs = []
    if hasher is not None:
        jobs.append(asyncio.to_thread(hasher.update, block))
    if writer is not None:
        jobs.append(writer.write(block))
    await asyncio.gather(*jobs)


async def pump(
    body: AsyncIterator[bytes],
    writer: FileWriter | None,
    hasher: Hasher | None,
    limit: int | None = None,
) -> int:
    """Write (and hash) all of ``body``; return how many bytes it held.

    Raises ``BodyTooLarge`` as soon as more than ``limit`` bytes arrive, so an oversized
    upload is cut off rather than stored.
    """
    received = 0
    buffer = bytearray()
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in body:
            if not chunk:
                continue
            received += len(chunk)
            if limit is not None and received > limit:
                raise BodyTooLarge(received)
            buffer += chunk
            if len(buffer) >= BLOCK:
                block, buffer = buffer, bytearray()  # hand over, don't copy
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(_process(block, writer, hasher))
        if pending is not None:
            await pending
            pending = None
        if buffer:
            await _process(buffer, writer, hasher)
    finally:
        if pending is not None:
            # Never abandon a block mid-write: the caller may roll the file back next.
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
    return received


def too_large(limit: int) -> RegistryError:
    return RegistryError("SIZE_INVALID", f"body exceeds the limit of {limit} bytes", status=413)
