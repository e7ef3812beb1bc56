"""The store-wide cap on upload sessions costs at most one walk of every marker a second
per process, instead of one per upload start, and still holds for the process's own opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry import layout
from registry.errors import RegistryError
from registry.store import RegistryStore
from registry.uploads import COUNT_INTERVAL, Uploads
from storage_backends import FileInfo, FilesystemDriver


class CountingDriver(FilesystemDriver):
    """The real filesystem driver, counting the walks of the session markers."""

    walks = 0

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        if path == layout.UPLOAD_CLIENTS:
            self.walks += 1
        async for info in super().walk(path):
            yield info


def uploads_on(driver: FilesystemDriver, total: int) -> Uploads:
    return Uploads(RegistryStore(driver), max_blob_size=None, session_timeout=3600, max_total_sessions=total)


async def test_upload_starts_walk_the_markers_at_most_once_a_second(tmp_path: Path) -> None:
    driver = CountingDriver(tmp_path, fsync=False)
    uploads = uploads_on(driver, total=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for number in range(10):
        await uploads.start(f"repo{number}", owner=f"addr:127.0.0.{number}")
    with pytest.raises(RegistryError) as refused:  # its own opens count without a walk
        await uploads.start("repo99", owner="addr:127.0.0.99")
    assert refused.value.code == "TOOMANYREQUESTS"
    elapsed = loop.time() - started
    assert driver.walks <= 1 + int(elapsed / COUNT_INTERVAL), (driver.walks, elapsed)


@pytest.mark.slow  # waits for the count to be renewed
async def test_sessions_of_another_process_count_once_the_count_is_renewed(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path, fsync=False)
    mine, other = uploads_on(driver, total=3), uploads_on(driver, total=3)
    await mine.start("repo", owner="addr:127.0.0.1")
    for number in range(2):
        await other.start("repo", owner=f"addr:127.0.0.{number + 2}")
    await asyncio.sleep(COUNT_INTERVAL + 0.1)
    with pytest.raises(RegistryError) as refused:
        await mine.start("repo", owner="addr:127.0.0.9")
    assert "3 upload sessions are open on this registry" in refused.value.detail
