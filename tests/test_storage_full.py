"""A full disk, for real: a small tmpfs the test mounts, with the registry's data on it.

Nothing truncated is stored, the client gets 507 with the spec's JSON error body, reads
go on, /readyz says the registry cannot take writes, and all recovers once there is room.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage_backends import FilesystemDriver, StorageFull

from .helpers import free_bytes, tmpfs
from .oci import make_image, push_image, sha256
from .servers import PierServer

NO_SPACE = "no space left on the registry's storage"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: filled in a moment, and gone with the test."""
    with tmpfs(tmp_path / "disk", "size=8m") as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    """Take all the disk's room but ``leave`` bytes, in one file that frees it when removed."""
    filler = disk / "filler"
    with open(filler, "ab") as handle:
        handle.write(b"\0" * max(0, free_bytes(disk) - leave))
    return filler


async def test_a_write_cut_short_by_a_full_disk_stores_nothing(small_disk: Path) -> None:
    """os.write on a nearly full disk writes part of its buffer and says so: that part
    must never be renamed into place."""
    driver = FilesystemDriver(small_disk / "root")
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(StorageFull):
        await driver.put_content("blobs/x/data", os.urandom(512 * 1024))
    assert not (small_disk / "root/blobs/x/data").exists()
    assert not [p for p in (small_disk / "root").rglob("*") if p.is_file()]  # no .tmp- left either

    writer = await driver.writer("blobs/y/data")
    with pytest.raises(StorageFull):
        await writer.write(os.urandom(512 * 1024))
    await writer.cancel()
    assert not [p for p in (small_disk / "root").rglob("*") if p.is_file()]


def padded_image(pad: int):
    """An image whose manifest is ``pad`` bytes larger than usual (a long annotation)."""
    return make_image((1024,), annotations={"pad": "x" * pad})


async def test_full_disk_answers_507_keeps_serving_reads_and_recovers(small_disk: Path) -> None:
    root = small_disk / "root"
    server = PierServer(root).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            earlier = make_image((64 * 1024, 1024))
            await push_image(http, "app/earlier", earlier, "v1")
            big = padded_image(700 * 1024)
            for blob in big.blobs:  # only its manifest is left to push
                response = await http.post(
                    "/v2/app/big/blobs/uploads/", params={"digest": sha256(blob)}, content=blob
                )
                assert response.status_code == 201, response.text

            # An upload takes all but 512 KiB; its next chunk cannot fit.
            location = (await http.post("/v2/app/big/blobs/uploads/")).headers["location"]
            first = os.urandom(free_bytes(small_disk) - 512 * 1024)
            response = await http.patch(location, content=first)
            assert response.status_code == 202, response.text
            location = response.headers["location"]
            response = await http.patch(location, content=os.urandom(1024 * 1024))
            assert response.status_code == 507, response.text
            assert response.headers["content-type"].startswith("application/json")
            error = response.json()["errors"][0]
            assert error["code"] == "INSUFFICIENT_STORAGE"
            assert NO_SPACE in error["message"]

            # The session stays resumable at the bytes it had: the failed chunk left nothing.
            status = await http.get(location)
            assert status.status_code == 204
            assert status.headers["range"] == f"0-{len(first) - 1}"

            # A manifest that does not fit is refused whole, and nothing of it is stored.
            response = await http.put(
                f"/v2/app/big/manifests/{big.digest}",
                content=big.manifest,
                headers={"Content-Type": big.media_type},
            )
            assert response.status_code == 507, response.text
            assert NO_SPACE in response.json()["errors"][0]["message"]
            assert (await http.get(f"/v2/app/big/manifests/{big.digest}")).status_code == 404

            # Reads go on; readiness says writes cannot.
            manifest = await http.get("/v2/app/earlier/manifests/v1", headers={"Accept": earlier.media_type})
            assert manifest.status_code == 200 and manifest.content == earlier.manifest
            for blob in earlier.blobs:
                got = await http.get(f"/v2/app/earlier/blobs/{sha256(blob)}")
                assert got.status_code == 200 and got.content == blob
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert NO_SPACE in json.dumps(ready.json())
            assert (await http.get("/healthz")).status_code == 200

            # Room again (the client gives the upload up): ready, and the same writes succeed.
            assert (await http.delete(location)).status_code == 204
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            response = await http.put(
                "/v2/app/big/manifests/v1", content=big.manifest, headers={"Content-Type": big.media_type}
            )
            assert response.status_code == 201, response.text
            got = await http.get("/v2/app/big/manifests/v1", headers={"Accept": big.media_type})
            assert got.status_code == 200 and got.content == big.manifest
        assert not [p for p in root.rglob(".tmp-*")], "a half-written file was left behind"
    finally:
        server.stop()


async def test_readiness_after_a_full_store_rechecks_s3_with_a_probe_write(seaweed) -> None:
    """S3 cannot tell its free space: a small probe write decides, and leaves nothing."""
    from registry.space import SpaceWatch

    from .s3_drivers import s3_driver

    driver = s3_driver(seaweed, seaweed.new_bucket())
    watch = SpaceWatch()
    assert await watch.writable(driver)  # never full: nothing checked
    watch.mark_full()
    assert watch.full_since is not None
    assert await watch.writable(driver)
    assert watch.full_since is None
    assert [info.path async for info in driver.walk("")] == []
    await driver.close()


@pytest.mark.slow  # a server with two worker processes
async def test_every_worker_says_a_full_disk_is_not_ready_before_any_write_fails(small_disk: Path) -> None:
    """Each worker process checks the free space itself: none needs a failed write of its own."""
    server = PierServer(small_disk / "root", "--workers", "2").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            assert (await http.get("/readyz")).status_code == 200
            filler = fill(small_disk, leave=256 * 1024)
            for _ in range(20):  # new connections: the kernel spreads them over both workers
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as fresh:
                    ready = await fresh.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert NO_SPACE in json.dumps(ready.json())
            filler.unlink()
            for _ in range(20):
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as fresh:
                    assert (await fresh.get("/readyz")).status_code == 200
    finally:
        server.stop()
