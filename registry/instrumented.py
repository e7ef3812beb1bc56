"""A storage driver that times and counts every primitive of the one it wraps, for /metrics.

Kept out of ``storage_backends``, which knows nothing of the server around it. Latency
is per primitive; for ``read`` it is the time to the first bytes, since the rest of a
stream goes at the client's pace. A missing path is an answer, not an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any, BinaryIO

from storage_backends import FileInfo, FileWriter, PathNotFound, StorageDriver, WriterBusy

from .metrics import Metrics


class InstrumentedWriter(FileWriter):
    def __init__(self, inner: FileWriter, driver: InstrumentedDriver) -> None:
        self.inner, self.driver = inner, driver

    @property
    def size(self) -> int:
        return self.inner.size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def sync(self) -> None:
        start = perf_counter()
        try:
            await self.inner.sync()
        except BaseException:
            self.driver.metrics.storage_error("sync")
            raise
        finally:
            self.driver.metrics.storage_histogram("sync").observe(perf_counter() - start)

    async def commit(self) -> None:
        start = perf_counter()
        try:
            await self.inner.commit()
        except BaseException:
            self.driver.metrics.storage_error("commit")
            raise
        finally:
            self.driver.metrics.storage_histogram("commit").observe(perf_counter() - start)

    async def cancel(self) -> None:
        await self.inner.cancel()


class InstrumentedDriver(StorageDriver):
    """Every primitive written out (no shared wrapper coroutine): this is on every request."""

    def __init__(self, inner: StorageDriver, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.metrics = metrics
        self._h = {op: metrics.storage_histogram(op) for op in OPERATIONS}

    async def get_content(self, path: str) -> bytes:
        start = perf_counter()
        try:
            return await self.inner.get_content(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("get_content")
            raise
        finally:
            self._h["get_content"].observe(perf_counter() - start)

    async def put_content(self, path: str, data: bytes) -> None:
        start = perf_counter()
        try:
            return await self.inner.put_content(path, data)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("put_content")
            raise
        finally:
            self._h["put_content"].observe(perf_counter() - start)

    async def stat(self, path: str) -> FileInfo:
        start = perf_counter()
        try:
            return await self.inner.stat(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("stat")
            raise
        finally:
            self._h["stat"].observe(perf_counter() - start)

    async def list_children(self, path: str) -> list[str]:
        start = perf_counter()
        try:
            return await self.inner.list_children(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("list")
            raise
        finally:
            self._h["list"].observe(perf_counter() - start)  # the label dashboards know: distribution's List

    async def move(self, source: str, dest: str) -> None:
        start = perf_counter()
        try:
            return await self.inner.move(source, dest)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("move")
            raise
        finally:
            self._h["move"].observe(perf_counter() - start)

    async def delete(self, path: str) -> None:
        start = perf_counter()
        try:
            return await self.inner.delete(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("delete")
            raise
        finally:
            self._h["delete"].observe(perf_counter() - start)

    async def delete_files(self, paths: list[str]) -> None:
        start = perf_counter()
        try:
            return await self.inner.delete_files(paths)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("delete_files")
            raise
        finally:
            self._h["delete_files"].observe(perf_counter() - start)

    async def exists(self, path: str) -> bool:
        start = perf_counter()
        try:
            return await self.inner.exists(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("exists")
            raise
        finally:
            self._h["exists"].observe(perf_counter() - start)

    async def open_local(self, path: str) -> BinaryIO | None:
        start = perf_counter()
        try:
            found = await self.inner.open_local(path)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("open")
            raise
        self._h["read"].observe(perf_counter() - start)
        return found

    async def url_for(self, path: str, expires: float) -> str | None:
        start = perf_counter()
        try:
            return await self.inner.url_for(path, expires)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("url_for")
            raise
        finally:
            self._h["url_for"].observe(perf_counter() - start)

    async def purge_incomplete(self, older_than: float) -> int:
        start = perf_counter()
        try:
            return await self.inner.purge_incomplete(older_than)
        except PathNotFound:
            raise
        except BaseException:
            self.metrics.storage_error("purge_incomplete")
            raise
        finally:
            self._h["purge_incomplete"].observe(perf_counter() - start)

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        start = perf_counter()
        first = True
        try:
            async for chunk in self.inner.reader(path, offset, length):
                if first:
                    self._h["read"].observe(perf_counter() - start)
                    first = False
                yield chunk
        except PathNotFound:
            raise
        except Exception:
            self.metrics.storage_error("read")
            raise

    async def writer(self, path: str, append: bool = False, size: int | None = None) -> FileWriter:
        start = perf_counter()
        try:
            writer = await self.inner.writer(path, append, size)
        except (PathNotFound, WriterBusy):
            raise
        except BaseException:
            self.metrics.storage_error("open_writer")
            raise
        finally:
            self._h["open_writer"].observe(perf_counter() - start)
        return InstrumentedWriter(writer, self)

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        async for info in self.inner.walk(path):
            yield info

    async def free_space(self) -> int | None:
        return await self.inner.free_space()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend-specific extras pass through
        return getattr(self.inner, name)


OPERATIONS = (
    *(
        "get_content",
        "put_content",
        "stat",
        "list",
        "move",
        "delete",
        "delete_files",
        "exists",
        "url_for",
        "purge_incomplete",
    ),
    "read",
    "open_writer",
)
