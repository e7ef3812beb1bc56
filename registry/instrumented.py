"""A storage driver that times and counts every primitive of the one it wraps, for /metrics.

Kept out of ``storage_backends``, which knows nothing of the server around it. Latency
is per primitive; for ``read`` it is the time to the first bytes, since the rest of a
stream goes at the client's pace. A missing path is an answer, not an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from storage_backends import FileInfo, FileWriter, PathNotFound, StorageDriver

from .metrics import Metrics

T = TypeVar("T")


class InstrumentedWriter(FileWriter):
    def __init__(self, inner: FileWriter, driver: InstrumentedDriver) -> None:
        self.inner, self.driver = inner, driver

    @property
    def size(self) -> int:
        return self.inner.size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def sync(self) -> None:
        await self.driver._timed("sync", self.inner.sync())

    async def commit(self) -> None:
        await self.driver._timed("commit", self.inner.commit())

    async def cancel(self) -> None:
        await self.inner.cancel()


class InstrumentedDriver(StorageDriver):
    def __init__(self, inner: StorageDriver, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._latency = {}
        self._errors = {}
        self._metrics = metrics

    def _observe(self, operation: str, seconds: float, failed: bool) -> None:
        latency = self._latency.get(operation)
        if latency is None:  # labels() once per operation: it is on every request's path
            latency = self._latency[operation] = self._metrics.storage_latency.labels(self.name, operation)
            self._errors[operation] = self._metrics.storage_errors.labels(self.name, operation)
        latency.observe(seconds)
        if failed:
            self._errors[operation].inc()

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        failed = False
        try:
            return await call
        except PathNotFound:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            self._observe(operation, time.perf_counter() - start, failed)

    async def get_content(self, path: str) -> bytes:
        return await self._timed("get_content", self.inner.get_content(path))

    async def put_content(self, path: str, data: bytes) -> None:
        await self._timed("put_content", self.inner.put_content(path, data))

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        start = time.perf_counter()
        first = True
        try:
            async for chunk in self.inner.reader(path, offset, length):
                if first:
                    self._observe("read", time.perf_counter() - start, False)
                    first = False
                yield chunk
        except PathNotFound:
            raise
        except Exception:
            self._observe("read", time.perf_counter() - start, True)
            raise

    async def writer(self, path: str, append: bool = False) -> FileWriter:
        return InstrumentedWriter(await self._timed("open_writer", self.inner.writer(path, append)), self)

    async def stat(self, path: str) -> FileInfo:
        return await self._timed("stat", self.inner.stat(path))

    async def list(self, path: str) -> list[str]:
        return await self._timed("list", self.inner.list(path))

    async def move(self, source: str, dest: str) -> None:
        await self._timed("move", self.inner.move(source, dest))

    async def delete(self, path: str) -> None:
        await self._timed("delete", self.inner.delete(path))

    async def delete_files(self, paths: list[str]) -> None:
        await self._timed("delete_files", self.inner.delete_files(paths))

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        async for info in self.inner.walk(path):
            yield info

    async def exists(self, path: str) -> bool:
        return await self._timed("exists", self.inner.exists(path))

    async def url_for(self, path: str, expires: float) -> str | None:
        return await self._timed("url_for", self.inner.url_for(path, expires))

    async def purge_incomplete(self, older_than: float) -> int:
        return await self._timed("purge_incomplete", self.inner.purge_incomplete(older_than))

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend-specific extras pass through
        return getattr(self.inner, name)
