"""The storage contract, on every backend registered in ``storage_backends.BACKENDS``.

Each backend gets a fresh store from ``STORES`` (the filesystem in a temporary folder, S3
in a bucket of a real SeaweedFS server), opened through ``open_storage`` as a server opens
it. A backend registered without a way to make a test store here fails every test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from storage_backends import (
    BACKENDS,
    InvalidPath,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageError,
    WriterBusy,
    open_storage,
    storage_scheme,
)
from storage_backends.s3 import MIN_PART

from .s3_drivers import s3_driver
from .seaweed import SeaweedS3


@dataclass
class FreshStore:
    """A fresh, empty store: its ``--root``, the environment and options it is opened with."""

    location: str
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def filesystem_store(request: pytest.FixtureRequest, tmp_path: Path) -> FreshStore:
    return FreshStore(str(tmp_path / "root"))


def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> FreshStore:
    """A bucket of its own on the session's SeaweedFS, reached through boto3's environment."""
    seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
    return FreshStore(f"s3://{seaweed.new_bucket()}/some/prefix", seaweed.env, {"addressing_style": "path"})


# How each registered backend (by scheme) gets a store to test: one entry per backend.
STORES: dict[str, Callable[[pytest.FixtureRequest, Path], FreshStore]] = {
    "file": filesystem_store,
    "s3": s3_store,
}


@pytest.fixture(params=sorted(BACKENDS))
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    scheme: str = request.param
    if scheme not in STORES:
        pytest.fail(f"storage backend {scheme!r} is registered but has no test store: add it to STORES")
    store = STORES[scheme](request, tmp_path)
    assert storage_scheme(store.location) == scheme
    with mock.patch.dict(os.environ, store.env):
        backend = open_storage(store.location, **store.options)
    yield backend
    await backend.close()


async def read_all(driver: StorageDriver, path: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in driver.reader(path, offset, length)])


async def test_put_get_stat_list_delete(driver: StorageDriver) -> None:
    await driver.put_content("a/b/c", b"hello")
    await driver.put_content("a/b2", b"x")
    assert await driver.get_content("a/b/c") == b"hello"
    info = await driver.stat("a/b/c")
    assert (info.size, info.is_dir) == (5, False)
    assert abs(info.mtime - time.time()) < 120
    assert (await driver.stat("a/b")).is_dir
    assert await driver.list_children("a") == ["b", "b2"]
    assert await driver.list_children("a/b") == ["c"]
    assert await driver.list_children("missing") == []
    await driver.delete("a/b")
    assert await driver.list_children("a") == ["b2"]  # a sibling sharing the prefix survives
    with pytest.raises(PathNotFound):
        await driver.get_content("a/b/c")
    with pytest.raises(PathNotFound):
        await driver.stat("a/b")
    await driver.delete("a/b")  # deleting what is gone is fine


async def test_ranged_reads(driver: StorageDriver) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    await driver.put_content("blob", data)
    assert await read_all(driver, "blob") == data
    assert await read_all(driver, "blob", 1000, 2_000_000) == data[1000:2_001_000]
    assert await read_all(driver, "blob", len(data) - 3) == data[-3:]
    with pytest.raises(PathNotFound):
        await read_all(driver, "nothing")


async def test_writer_is_invisible_until_commit(driver: StorageDriver) -> None:
    data = os.urandom(20 * 1024 * 1024 + 7)  # several multipart parts on S3
    writer = await driver.writer("x/data")
    for start in range(0, len(data), 3_000_000):
        await writer.write(data[start : start + 3_000_000])
    assert writer.size == len(data)
    assert not await driver.exists("x/data")
    assert await driver.list_children("x") == []
    await writer.commit()
    assert await read_all(driver, "x/data") == data

    cancelled = await driver.writer("y/data")
    await cancelled.write(os.urandom(9 * 1024 * 1024))
    await cancelled.cancel()
    assert not await driver.exists("y/data")
    assert await driver.purge_incomplete(time.time() + 60) == 0  # the cancel left nothing behind


@pytest.mark.parametrize("size", [1000, 2 * MIN_PART + 3])  # one PUT; a multipart upload on S3
async def test_a_writer_off_its_declared_size_is_never_committed(driver: StorageDriver, size: int) -> None:
    data = os.urandom(size)
    for written in (data[:-1], data + b"x"):
        writer = await driver.writer("blobs/x/data", size=size)
        await writer.write(written)
        with pytest.raises(ShortWrite):
            await writer.commit()
        assert not await driver.exists("blobs/x/data")
    assert await driver.purge_incomplete(time.time() + 60) == 0  # nothing left half-written
    writer = await driver.writer("blobs/x/data", size=size)
    await writer.write(data)
    await writer.commit()
    assert await read_all(driver, "blobs/x/data") == data


async def test_append_is_exclusive_and_rolls_back(driver: StorageDriver) -> None:
    await driver.put_content("up/data", b"")
    first = await driver.writer("up/data", append=True)
    with pytest.raises(WriterBusy):
        await driver.writer("up/data", append=True)
    await first.write(b"abc")
    await first.commit()
    second = await driver.writer("up/data", append=True)
    assert second.size == 3
    await second.write(b"never")
    await second.cancel()
    assert await driver.get_content("up/data") == b"abc"
    assert (await driver.stat("up/data")).size == 3
    with pytest.raises(PathNotFound):
        await driver.writer("nothing/data", append=True)


async def test_appends_of_any_size_add_up(driver: StorageDriver) -> None:
    """Small chunks below S3's 5 MiB part minimum, big ones, and one that straddles it."""
    await driver.put_content("up/data", b"")
    expected = b""
    for size in (1, 1_000_000, 3_000_000, 2_000_000, 7_000_000, 10, 6_000_000):
        chunk = os.urandom(size)
        writer = await driver.writer("up/data", append=True)
        await writer.write(chunk)
        await writer.commit()
        expected += chunk
        assert (await driver.stat("up/data")).size == len(expected)
    assert await read_all(driver, "up/data") == expected
    assert await read_all(driver, "up/data", 4_000_000, 5_000_000) == expected[4_000_000:9_000_000]
    await driver.move("up/data", "blob/data")
    assert await read_all(driver, "blob/data") == expected
    assert not await driver.exists("up/data")


async def test_synced_append_is_readable_before_commit(driver: StorageDriver) -> None:
    await driver.put_content("up/data", b"")
    writer = await driver.writer("up/data", append=True)
    await writer.write(b"hello")
    await writer.sync()
    assert await driver.get_content("up/data") == b"hello"
    await driver.move("up/data", "done/data")  # committing a blob while still holding the upload
    await writer.commit()
    assert await driver.get_content("done/data") == b"hello"
    assert not await driver.exists("up/data")


async def test_move_replaces_atomically(driver: StorageDriver) -> None:
    await driver.put_content("src", b"new")
    await driver.put_content("dst", b"old")
    await driver.move("src", "dst")
    assert await driver.get_content("dst") == b"new"
    assert not await driver.exists("src")
    with pytest.raises(PathNotFound):
        await driver.move("src", "elsewhere")


async def test_walk_lists_every_file_once_with_its_size(driver: StorageDriver) -> None:
    """Across listing pages (S3 answers 1,000 keys at a time), with appendable files whose
    hidden segments sort among their neighbours, and with writers not yet committed."""
    files = {f"t/many/{i:04d}": b"x" * (i % 7) for i in range(1100)}
    files |= {"t/a/b/data": b"abc", "t/a/b-c": b"12345", "t/a/b.x": b"", "t/z": b"zz"}
    for start in range(0, len(files), 64):
        batch = list(files.items())[start : start + 64]
        await asyncio.gather(*(driver.put_content(path, data) for path, data in batch))
    await driver.put_content("t/up/data", b"")
    for size in (10, 20, 30):
        writer = await driver.writer("t/up/data", append=True)
        await writer.write(os.urandom(size))
        await writer.commit()
    files["t/up/data"] = b"x" * 60
    pending = await driver.writer("t/a/pending")
    await pending.write(b"not yet")
    await driver.put_content("outside", b"not under t")

    walked = [info async for info in driver.walk("t")]
    assert sorted(i.path for i in walked) == sorted(files)
    assert {i.path: i.size for i in walked} == {path: len(data) for path, data in files.items()}
    assert all(not i.is_dir and abs(i.mtime - time.time()) < 300 for i in walked)
    # the generic list-and-stat walk agrees with the backend's own
    generic = [info async for info in StorageDriver.walk(driver, "t/a")]
    under_a = {(i.path, i.size) for i in walked if i.path.startswith("t/a/")}
    assert {(i.path, i.size) for i in generic} == under_a
    assert [info async for info in driver.walk("nothing")] == []
    await pending.cancel()


async def test_delete_files_removes_files_and_the_folders_they_leave_empty(driver: StorageDriver) -> None:
    for path in ("d/a/data", "d/a/other", "d/b/data", "d/c/data", "top"):
        await driver.put_content(path, path.encode())
    await driver.delete_files(["d/a/data", "d/b/data", "missing/file", "top"])
    assert await driver.list_children("d") == ["a", "c"]  # b went with its last file; a keeps "other"
    assert await driver.list_children("d/a") == ["other"]
    assert not await driver.exists("top") and not await driver.exists("d/b")
    assert await driver.get_content("d/c/data") == b"d/c/data"
    await driver.put_content("d/b/data", b"again")  # a writer re-creates what it needs
    assert await driver.get_content("d/b/data") == b"again"


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "", "a/\x00", ".hidden"]
)
async def test_paths_that_could_escape_are_refused(driver: StorageDriver, path: str) -> None:
    with pytest.raises(InvalidPath):
        await driver.put_content(path, b"x")
    with pytest.raises(InvalidPath):
        await driver.stat(path)


# -- S3 only ---------------------------------------------------------------------------


async def test_s3_append_lock_of_a_dead_writer_expires(seaweed: SeaweedS3, monkeypatch) -> None:
    from storage_backends import s3

    driver = s3_driver(seaweed, seaweed.new_bucket())
    await driver.put_content("up/data", b"")
    await driver.writer("up/data", append=True)  # never committed: its process "died"
    with pytest.raises(WriterBusy):
        await driver.writer("up/data", append=True)
    monkeypatch.setattr(s3, "LOCK_LEASE", 0.0)
    writer = await driver.writer("up/data", append=True)
    await writer.write(b"ok")
    await writer.commit()
    assert await driver.get_content("up/data") == b"ok"


async def test_s3_purge_aborts_multipart_uploads_of_dead_writers(seaweed: SeaweedS3) -> None:
    driver = s3_driver(seaweed, seaweed.new_bucket())
    writer = await driver.writer("big/data")
    await writer.write(os.urandom(MIN_PART * 2))  # parts sent; the writer never commits
    await asyncio_sleep_until_parts_done(writer)
    client = seaweed.client()
    assert client.list_multipart_uploads(Bucket=driver.bucket).get("Uploads")
    assert await driver.purge_incomplete(time.time() - 3600) == 0  # too young to be a leftover
    assert await driver.purge_incomplete(time.time() + 1) == 1
    assert not client.list_multipart_uploads(Bucket=driver.bucket).get("Uploads")


async def test_s3_a_failed_part_never_completes_the_object(seaweed: SeaweedS3) -> None:
    """A part S3 refuses (here: its multipart upload was aborted under the writer) fails
    the write, and the object never appears."""
    driver = s3_driver(seaweed, seaweed.new_bucket(), part_size=MIN_PART)
    writer = await driver.writer("blobs/x/data", size=3 * MIN_PART)
    await writer.write(os.urandom(2 * MIN_PART))
    await asyncio_sleep_until_parts_done(writer)
    client = seaweed.client()
    for upload in client.list_multipart_uploads(Bucket=driver.bucket)["Uploads"]:
        client.abort_multipart_upload(Bucket=driver.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    with pytest.raises(StorageError):
        await writer.write(os.urandom(MIN_PART))
        await writer.commit()
    await writer.cancel()
    assert not await driver.exists("blobs/x/data")
    assert not client.list_multipart_uploads(Bucket=driver.bucket).get("Uploads")


async def asyncio_sleep_until_parts_done(writer) -> None:
    import asyncio

    await asyncio.gather(*writer._parts)


async def test_s3_presigned_url_serves_the_object_and_only_with_its_signature(seaweed: SeaweedS3) -> None:
    driver = s3_driver(seaweed, seaweed.new_bucket())
    await driver.put_content("blobs/x/data", b"payload")
    url = await driver.url_for("blobs/x/data", 60)
    assert url is not None and url.startswith(seaweed.endpoint)
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == b"payload"
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await http.get(tampered)).status_code == 403


async def test_s3_missing_bucket_or_wrong_secret_fails_in_one_line(seaweed: SeaweedS3) -> None:
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        s3_driver(seaweed, "no-such-bucket")
    bucket = seaweed.new_bucket()
    wrong = {**seaweed.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    with (
        mock.patch.dict(os.environ, wrong),
        pytest.raises(ValueError, match=f"bucket '{bucket}' is not usable"),
    ):
        open_storage(f"s3://{bucket}", addressing_style="path")
