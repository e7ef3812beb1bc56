"""Ordered work on a stream of pieces, several pieces in flight.

A mirror's cold blob is hashed and written to storage as it arrives. Both must see the
pieces in order, and neither may hold up the other or the reader: each gets a ``Lane``,
which runs its work on one piece after another while the reader goes on, up to ``depth``
pieces behind. The first failure stops the lane (every later piece raises it), and the
reader sees it at its next ``submit`` past the depth or at ``drain``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lane(Generic[T]):
    def __init__(self, work: Callable[[T], Awaitable[object]], depth: int) -> None:
        self._work = work
        self._depth = depth
        self._in_flight: deque[asyncio.Task[None]] = deque()

    async def submit(self, item: T) -> None:
        """Queue ``item`` after the ones before it; wait while ``depth`` are in flight."""
        previous = self._in_flight[-1] if self._in_flight else None
        self._in_flight.append(asyncio.ensure_future(self._after(previous, item)))
        while len(self._in_flight) > self._depth:
            await self._finish_oldest()

    async def _after(self, previous: asyncio.Task[None] | None, item: T) -> None:
        if previous is not None:
            await previous  # its failure is this one's: the lane stops there
        await self._work(item)

    async def drain(self) -> None:
        """Wait for every piece; the lane's failure, if it had one."""
        while self._in_flight:
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        # Left in the deque while it runs: if the caller is cancelled meanwhile, ``settle``
        # still waits for it (its thread may be writing), and it is not cancelled with the
        # caller, as awaiting the task itself would.
        oldest = self._in_flight[0]
        await asyncio.wait([oldest])
        self._in_flight.popleft()
        oldest.result()

    async def settle(self) -> None:
        """Wait for whatever is still running, failures ignored: nothing may be cancelled
        under a write in flight, and nothing may outlive the download that started it."""
        if self._in_flight:
            await asyncio.wait(self._in_flight)
            for task in self._in_flight:
                if not task.cancelled():
                    task.exception()  # retrieved: the first failure was reported by ``drain``
            self._in_flight.clear()
