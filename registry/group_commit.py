"""Group commit: items that arrive while a write is in flight go together in the next one.

Audit entries and webhook events are each stored before the request that caused them is
answered; sixteen concurrent requests then cost one or two storage writes, not sixteen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write  # stores a batch, or raises: then every item of it fails
        self._unwritten: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        """Returns once ``item`` is stored, with the items that came while it waited."""
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unwritten.append((item, stored))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_unwritten())
        await stored

    async def _write_unwritten(self) -> None:
        while self._unwritten:
            batch, self._unwritten = self._unwritten, []
            try:
                await self._write([item for item, _ in batch])
            except Exception as exc:  # the requests fail: nothing is acknowledged that is not stored
                for _, stored in batch:
                    if not stored.done():
                        stored.set_exception(exc)
                continue
            for _, stored in batch:
                if not stored.done():
                    stored.set_result(None)
