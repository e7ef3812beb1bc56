"""The filesystem backend's contract: atomic writes, exclusive appends, no escape from the root."""

from __future__ import annotations

import os

import pytest

from storage_backends import FilesystemDriver, InvalidPath, PathNotFound, WriterBusy, open_storage


@pytest.fixture
def driver(tmp_path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


async def test_put_get_stat_list_delete(driver: FilesystemDriver) -> None:
    await driver.put_content("a/b/c", b"hello")
    assert await driver.get_content("a/b/c") == b"hello"
    info = await driver.stat("a/b/c")
    assert (info.size, info.is_dir) == (5, False)
    assert (await driver.stat("a/b")).is_dir
    assert await driver.list_children("a/b") == ["c"]
    assert await driver.list_children("missing") == []
    await driver.delete("a")
    with pytest.raises(PathNotFound):
        await driver.get_content("a/b/c")
    await driver.delete("a")  # deleting what is gone is fine


async def test_ranged_reads(driver: FilesystemDriver) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    await driver.put_content("blob", data)
    assert b"".join([c async for c in driver.reader("blob")]) == data
    assert b"".join([c async for c in driver.reader("blob", 1000, 2_000_000)]) == data[1000:2_001_000]
    with pytest.raises(PathNotFound):
        [c async for c in driver.reader("nothing")]


async def test_writer_is_invisible_until_commit(driver: FilesystemDriver) -> None:
    writer = await driver.writer("x/data")
    await writer.write(b"partial")
    assert not await driver.exists("x/data")
    assert await driver.list_children("x") == []  # the temporary file is hidden
    await writer.commit()
    assert await driver.get_content("x/data") == b"partial"

    cancelled = await driver.writer("y/data")
    await cancelled.write(b"never")
    await cancelled.cancel()
    assert not await driver.exists("y/data")
    assert os.listdir(driver.root / "y") == []


async def test_append_is_exclusive_and_rolls_back(driver: FilesystemDriver) -> None:
    await driver.put_content("up/data", b"")
    first = await driver.writer("up/data", append=True)
    with pytest.raises(WriterBusy):
        await driver.writer("up/data", append=True)
    await first.write(b"abc")
    await first.commit()

    second = await driver.writer("up/data", append=True)
    assert second.size == 3
    await second.write(b"garbage")
    await second.cancel()
    assert await driver.get_content("up/data") == b"abc"


async def test_append_never_writes_a_file_that_was_moved_away(driver: FilesystemDriver) -> None:
    await driver.put_content("up/data", b"")
    holder = await driver.writer("up/data", append=True)
    await holder.write(b"complete")
    with pytest.raises(WriterBusy):
        await driver.writer("up/data", append=True)
    await holder.sync()
    await driver.move("up/data", "blob/data")  # committed while still locked
    await holder.commit()
    with pytest.raises(PathNotFound):
        await driver.writer("up/data", append=True)
    assert await driver.get_content("blob/data") == b"complete"
    assert not await driver.exists("up/data")  # an append never recreates the file


async def test_move_replaces_atomically(driver: FilesystemDriver) -> None:
    await driver.put_content("src", b"new")
    await driver.put_content("deep/dst", b"old")
    await driver.move("src", "deep/dst")
    assert await driver.get_content("deep/dst") == b"new"
    with pytest.raises(PathNotFound):
        await driver.move("src", "elsewhere")


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "a/./b", ".hidden", "a\x00b", "a/b/", "x" * 5000],
)
async def test_paths_that_could_escape_are_refused(driver: FilesystemDriver, path: str) -> None:
    with pytest.raises(InvalidPath):
        await driver.put_content(path, b"x")
    with pytest.raises(InvalidPath):
        await driver.get_content(path)
    with pytest.raises(InvalidPath):
        await driver.delete(path)


def test_open_storage_rejects_unknown_schemes(tmp_path) -> None:
    assert isinstance(open_storage(str(tmp_path)), FilesystemDriver)
    with pytest.raises(ValueError, match="gopher"):
        open_storage("gopher://somewhere")


async def test_a_file_deleted_with_its_folder_right_after_its_write_is_written_once(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook queue: its dispatcher can deliver and delete a file, and prune the folder,
    before the writer's thread fsyncs that folder. The write succeeded: no error, no rewrite."""
    real_replace = os.replace
    replaced: list[str] = []

    def replace_then_consumed(source, target):
        real_replace(source, target)
        replaced.append(str(target))
        os.unlink(target)
        os.rmdir(os.path.dirname(target))

    monkeypatch.setattr("storage_backends.filesystem.os.replace", replace_then_consumed)
    await driver.put_content("_events/hook/0001", b"event")
    assert len(replaced) == 1
    assert await driver.list_children("_events/hook") == []
