"""Pull counts and last-pulled times per tag and per manifest digest, without a write per pull.

A pull only bumps a counter in memory; every ``interval`` seconds each server process writes
its cumulative counts to a file of its own (``layout.pull_stats``), and readers (retention,
the web UI) add every process's file up. A crash loses at most one interval of counts, which
retention can afford: it keeps tags pulled within days, not seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from storage_backends import PathNotFound, StorageDriver

from .. import layout
from ..inventory import bounded

log = logging.getLogger("pier.pulls")

Key = tuple[str, str]  # (repository, tag or digest)


@dataclass
class PullCount:
    count: int = 0
    last: float = 0.0  # seconds since the epoch

    def add(self, other: PullCount) -> None:
        self.count += other.count
        self.last = max(self.last, other.last)


def _encode(counts: dict[Key, PullCount]) -> bytes:
    rows = [[name, ref, c.count, round(c.last, 3)] for (name, ref), c in counts.items()]
    return json.dumps({"version": 1, "pulls": rows}).encode()


def _decode(body: bytes) -> dict[Key, PullCount]:
    found: dict[Key, PullCount] = {}
    try:
        for name, ref, count, last in json.loads(body)["pulls"]:
            found[(str(name), str(ref))] = PullCount(int(count), float(last))
    except (ValueError, KeyError, TypeError):
        log.warning("skipping an unreadable pull-count file")
    return found


class PullStats:
    def __init__(self, driver: StorageDriver, interval: float = 10.0) -> None:
        self.driver = driver
        self.interval = interval
        # One file per process lifetime: workers and replicas never write each other's.
        self.process = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._counts: dict[Key, PullCount] = {}
        self._dirty = False
        self._task: asyncio.Task[None] | None = None

    def pulled(self, repository: str, reference: str) -> None:
        """Count a pull: memory only, on the hot path."""
        count = self._counts.get((repository, reference))
        if count is None:
            count = self._counts[(repository, reference)] = PullCount()
        count.count += 1
        count.last = time.time()
        self._dirty = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        try:
            await self.driver.put_content(layout.pull_stats(self.process), _encode(self._counts))
        except Exception:
            self._dirty = True
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing pull counts failed; retrying")

    async def totals(self) -> dict[Key, PullCount]:
        """Every process's counts added up, this one's unflushed counts included."""
        names = await self.driver.list_children(layout.PULL_STATS)

        async def read(name: str) -> dict[Key, PullCount]:
            if name == self.process:
                return {}
            try:
                return _decode(await self.driver.get_content(layout.pull_stats(name)))
            except PathNotFound:
                return {}

        total: dict[Key, PullCount] = {}
        for found in [*await bounded(read, names), self._counts]:
            for key, count in found.items():
                total.setdefault(key, PullCount()).add(count)
        return total
