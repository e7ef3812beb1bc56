"""Moving request bodies into storage: hashed while they stream, in bounded memory.

Bytes arrive from the socket in small pieces; they are gathered into blocks of
blocks (1-4 MiB, see ``block_size``), and each block is hashed and written in worker
threads (both release the GIL) while the event loop already receives the next one. At
most two blocks are in memory per transfer, whatever the size of the blob.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from oci.digest import Hasher
from storage_backends import FileWriter

from .errors import RegistryError

MIN_BLOCK = 1024 * 1024
MAX_BLOCK = 4 * 1024 * 1024


def block_size(content_length: int | None) -> int:
    """Large blocks for large bodies (fewer thread hops: ~570 vs ~460 MB/s for 512 MiB
    pushes here); small ones for chunks, whose client waits for the last block's work
    (8 MiB PATCHes: ~250 vs ~200 MB/s)."""
    if content_length is None:
        return MAX_BLOCK
    return max(MIN_BLOCK, min(MAX_BLOCK, content_length // 16))


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
    block_bytes: int = MAX_BLOCK,
) -> int:
    """Write (and hash) all of ``body``, in blocks of ``block_bytes``; return its length.

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
            if len(buffer) >= block_bytes:
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
