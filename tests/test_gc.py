"""``pier gc``: what it frees, what it must keep, and its handshake with pushes in flight."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from registry import layout
from registry.errors import RegistryError
from registry.gc import collect, summary
from registry.references import Digest
from registry.store import RegistryStore
from storage_backends import FilesystemDriver

from .maintenance import assert_pulls, remove, run_storage_command, stored
from .oci import (
    OCI_INDEX,
    Image,
    descriptor,
    error_codes,
    make_image,
    make_index,
    push_blob,
    push_image,
    push_manifest,
    sha256,
)
from .servers import free_port
from .storeview import LocalStorage, Storage

# slow: pier gc as a process per step; grace periods must pass
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]

SUMMARY = re.compile(
    r"gc: (?:would free )?(\d+) blobs \([^)]*\)(?: freed)?, (?:delete )?(\d+) manifests"
    r"(?: deleted)?, (?:purge )?(\d+) links"
)


def gc(storage: Storage | Path, *args: str) -> tuple[int, int, int]:
    """Run gc, expect success; (blobs, manifests, links) from its summary line."""
    done = run_storage_command(storage, "gc", *args)
    assert done.returncode == 0, done.stderr
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


async def assert_gone(client: httpx.AsyncClient, storage: Storage, repo: str, digests: list[str]) -> None:
    for digest in digests:
        response = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 404, digest
        assert error_codes(response) == ["BLOB_UNKNOWN"]
        assert not stored(storage, digest)


@pytest.fixture
async def served(start_registry):
    server = start_registry()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield server, http


async def test_gc_frees_what_nothing_references_and_keeps_the_rest(served) -> None:
    server, client = served
    kept, dropped = make_image(), make_image()
    await push_image(client, "app/kept", kept, "v1")
    await push_image(client, "app/dropped", dropped, "v1")
    # The same content in a second repository, referenced there: it must survive.
    shared = make_image()
    await push_image(client, "app/kept", shared, "v2")
    await push_image(client, "app/dropped", shared, "v2")
    assert (await client.delete(f"/v2/app/dropped/manifests/{dropped.digest}")).status_code == 202

    blobs, manifests, links = gc(server.storage, "--grace", "0s")
    assert (blobs, manifests, links) == (4, 0, 3)  # config, 2 layers, manifest; 3 layer links
    await assert_pulls(client, "app/kept", "v1", kept)
    await assert_pulls(client, "app/kept", "v2", shared)
    await assert_pulls(client, "app/dropped", "v2", shared)
    await assert_gone(client, server.storage, "app/dropped", [sha256(b) for b in dropped.blobs])
    assert not stored(server.storage, dropped.digest)
    assert not server.storage.files(f"{layout.layers_dir('app/dropped')}/sha256/{sha256(dropped.config)[7:]}")
    assert gc(server.storage, "--grace", "0s") == (0, 0, 0)  # nothing left to do


async def test_dry_run_changes_nothing(served) -> None:
    server, client = served
    image = make_image()
    await push_image(client, "dry/run", image, "v1")
    assert (await client.delete(f"/v2/dry/run/manifests/{image.digest}")).status_code == 202
    before = server.storage.files()
    done = run_storage_command(server.storage, "gc", "--dry-run", "--grace", "0s", "-v")
    assert done.returncode == 0, done.stderr
    assert "gc: would free 4 blobs (" in done.stdout and "purge 3 links (dry run" in done.stdout
    assert f"would free blob {image.digest}" in done.stdout
    assert server.storage.files() == before
    assert gc(server.storage, "--grace", "0s")[0] == 4


async def test_grace_period_keeps_young_blobs(served) -> None:
    server, client = served
    digest = await push_blob(client, "young/blob", os.urandom(4096))  # uploaded, not yet in a manifest
    assert gc(server.storage) == (0, 0, 0)  # default grace: 1h
    assert gc(server.storage, "--grace", "10m") == (0, 0, 0)
    assert (await client.get(f"/v2/young/blob/blobs/{digest}")).status_code == 200
    assert gc(server.storage, "--grace", "0s") == (1, 0, 1)
    await assert_gone(client, server.storage, "young/blob", [digest])


@pytest.mark.serial  # a push and a gc must fit in the 3 s grace
async def test_an_old_blob_linked_again_recently_is_kept(served) -> None:
    """Ages by waiting, not by touching files, so it reads the same on disk and on S3 (whose
    times have one-second resolution)."""
    server, client = served
    data = os.urandom(1000)
    digest = await push_blob(client, "old/one", data)
    await asyncio.sleep(4.5)  # sleep-ok: ages by waiting; data and first link older than the 3 s grace
    await push_blob(client, "old/two", data)  # the old bytes linked into another repository: a fresh link
    assert gc(server.storage, "--grace", "3s") == (0, 0, 0)
    await asyncio.sleep(3.5)  # sleep-ok: ages by waiting; the fresh link now older than the grace too
    assert gc(server.storage, "--grace", "3s") == (1, 0, 2)
    await assert_gone(client, server.storage, "old/two", [digest])


async def test_delete_untagged_keeps_referrers_and_children_of_tagged(served) -> None:
    server, client = served
    repo = "untagged/repo"
    tagged, untagged = make_image(), make_image()
    await push_image(client, repo, tagged, "v1")
    await push_image(client, repo, untagged, untagged.digest)
    signature = make_image((64,), subject=descriptor(tagged.media_type, tagged.manifest))
    await push_image(client, repo, signature, signature.digest)
    orphan_signature = make_image((64,), subject=descriptor(untagged.media_type, untagged.manifest))
    await push_image(client, repo, orphan_signature, orphan_signature.digest)
    children = [make_image() for _ in range(2)]
    for child in children:
        await push_image(client, repo, child, child.digest)
    index = make_index(children)
    assert (await push_manifest(client, repo, "multi", index, OCI_INDEX)).status_code == 201

    # Without --delete-untagged every manifest is a root; young ones are kept in any case.
    assert gc(server.storage, "--grace", "0s") == (0, 0, 0)
    assert gc(server.storage, "--delete-untagged") == (0, 0, 0)

    blobs, manifests, _ = gc(server.storage, "--delete-untagged", "--grace", "0s")
    assert manifests == 2 and blobs == 2 * 4 - 1  # two manifests; the 1-layer signature has 3 blobs
    await assert_pulls(client, repo, "v1", tagged)
    await assert_pulls(client, repo, signature.digest, signature)
    for child in children:
        await assert_pulls(client, repo, child.digest, child)
    assert (await client.get(f"/v2/{repo}/manifests/multi")).content == index
    for gone in (untagged, orphan_signature):
        assert (await client.get(f"/v2/{repo}/manifests/{gone.digest}")).status_code == 404
        await assert_gone(client, server.storage, repo, [sha256(b) for b in gone.blobs])
    listed = (await client.get(f"/v2/{repo}/referrers/{tagged.digest}")).json()["manifests"]
    assert [m["digest"] for m in listed] == [signature.digest]
    assert (await client.get(f"/v2/{repo}/referrers/{untagged.digest}")).json()["manifests"] == []


async def test_stale_markers_are_cleared_and_fresh_ones_kept(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path, fsync=False)
    for run, digest in (("stale", Digest.of(b"stale")), ("fresh", Digest.of(b"fresh"))):
        await driver.put_content(layout.doomed_marker(run), layout.encode_doomed([digest]))
    old = time.time() - 3 * 3600
    os.utime(tmp_path / layout.doomed_marker("stale"), (old, old))
    gc(tmp_path)
    assert await driver.list_children(layout.GC_DOOMED) == ["fresh"]


async def test_sweep_stops_when_marking_is_too_old(tmp_path: Path) -> None:
    """Past the deadline servers may ignore the markers: deleting then would be unsafe."""
    driver = FilesystemDriver(tmp_path, fsync=False)
    digest = Digest.of(b"unreferenced")
    await driver.put_content(layout.blob_data(digest), b"unreferenced")
    await RegistryStore(driver).link_blob("repo", digest)
    report = await collect(driver, grace=0.0, deadline=-1.0)
    assert report.blobs == 0 and "stopped sweeping" in report.stopped
    assert "stopped sweeping" in summary(report, dry_run=False)
    assert await driver.exists(layout.blob_data(digest))
    assert await driver.list_children(layout.GC_DOOMED) == []  # its markers are gone all the same
    report = await collect(driver, grace=0.0)
    assert (report.blobs, report.links, report.stopped) == (1, 1, "")
    assert not await driver.exists(layout.blob_data(digest))


def test_storage_errors_are_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    port = free_port()  # nothing listens there
    unreachable = Storage("s3://bucket/x", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    unreachable.env |= {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for command in ("gc", "fsck"):
        for storage, code, message in (
            (not_a_folder, 2, "no registry data"),
            (unreachable, 1, "not reachable"),
        ):
            done = run_storage_command(storage, command)
            assert done.returncode == code, done.stderr
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
            assert done.stderr.startswith(f"pier {command}: ") and message in done.stderr
    assert not_a_folder.read_text() == "x"


def test_pier_forwards_gc_and_fsck(tmp_path: Path) -> None:
    assert "gc: 0 blobs (0B) freed" in run_storage_command(tmp_path, "gc", module="puller").stdout
    assert run_storage_command(tmp_path, "fsck", module="puller").returncode == 0
    bad = run_storage_command(tmp_path, "gc", "--grace", "soon", module="puller")
    assert bad.returncode == 2 and "--grace must be a duration" in bad.stderr


# -- the doomed-marker handshake, at the store ---------------------------------------


async def _store_with_image(root: Path) -> tuple[RegistryStore, Image]:
    driver = FilesystemDriver(root, fsync=False)
    store = RegistryStore(driver)
    image = make_image()
    for blob in image.blobs:
        await driver.put_content(layout.blob_data(Digest.parse(sha256(blob))), blob)
        await store.link_blob("repo", Digest.parse(sha256(blob)))
    return store, image


async def test_manifest_referencing_a_doomed_blob_is_refused(tmp_path: Path) -> None:
    store, image = await _store_with_image(tmp_path)
    layer = Digest.parse(sha256(image.layers[1]))
    other = Digest.of(b"something else GC may delete")
    await store.driver.put_content(layout.doomed_marker("run-1"), layout.encode_doomed([other, layer]))
    with pytest.raises(RegistryError) as refused:
        await store.put_manifest("repo", "v1", image.manifest, image.media_type, [])
    assert refused.value.code == "MANIFEST_BLOB_UNKNOWN"
    assert str(layer) in str(refused.value.detail)
    manifest = Digest.parse(image.digest)
    assert not await store.driver.exists(layout.revision_link("repo", manifest))
    assert not await store.driver.exists(layout.tag_link("repo", "v1"))

    old = time.time() - 3601
    os.utime(tmp_path / layout.doomed_marker("run-1"), (old, old))  # a crashed GC's leftover
    digest, _ = await store.put_manifest("repo", "v1", image.manifest, image.media_type, [])
    assert str(digest) == image.digest
    assert (await store.resolve("repo", "v1")).digest == manifest


async def test_refused_re_push_keeps_the_existing_revision(tmp_path: Path) -> None:
    """A revision written before the marker was seen by GC's second mark: it must stay."""
    store, image = await _store_with_image(tmp_path)
    await store.put_manifest("repo", "v1", image.manifest, image.media_type, [])
    config = Digest.parse(sha256(image.config))
    await store.driver.put_content(layout.doomed_marker("run-1"), layout.encode_doomed([config]))
    with pytest.raises(RegistryError):
        await store.put_manifest("repo", "v2", image.manifest, image.media_type, [])
    assert (await store.resolve("repo", "v1")).digest == Digest.parse(image.digest)
    assert await store.tags("repo") == ["v1"]


class _GCBeforeRevision(FilesystemDriver):
    """Runs a whole GC just before the server writes its revision link: after its check of
    the references, before its look for markers, which the finished GC has removed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.armed = True

    async def put_content(self, path: str, data: bytes) -> None:
        if self.armed and "/_manifests/revisions/" in path:
            self.armed = False
            self.report = await collect(self, grace=0.0)
        await super().put_content(path, data)


async def test_a_gc_that_finished_between_check_and_marker_look_is_caught(tmp_path: Path) -> None:
    """The race ``gc`` under live pushes once lost an image to: the check passed, then a GC
    that never saw the new revision deleted its layers and was done before the server looked."""
    driver = _GCBeforeRevision(tmp_path)
    store = RegistryStore(driver)
    image = make_image()
    for blob in image.blobs:
        await driver.put_content(layout.blob_data(Digest.parse(sha256(blob))), blob)
        await store.link_blob("repo", Digest.parse(sha256(blob)))
    with pytest.raises(RegistryError) as refused:
        await store.put_manifest("repo", "v1", image.manifest, image.media_type, [])
    assert driver.report.blobs == len(image.blobs) + 1  # the GC ran: layers, config, manifest
    assert refused.value.code == "MANIFEST_BLOB_UNKNOWN"
    assert not await driver.exists(layout.revision_link("repo", Digest.parse(image.digest)))
    assert await store.tags("repo") == []
    for blob in image.blobs:  # the client pushes again, and then the manifest lands
        await driver.put_content(layout.blob_data(Digest.parse(sha256(blob))), blob)
        await store.link_blob("repo", Digest.parse(sha256(blob)))
    digest, _ = await store.put_manifest("repo", "v1", image.manifest, image.media_type, [])
    assert (await store.resolve("repo", "v1")).digest == digest


async def test_index_referencing_a_doomed_child_is_refused(served) -> None:
    server, client = served
    child = make_image()
    await push_image(client, "idx/repo", child, child.digest)
    marker = layout.doomed_marker("run-1")
    if isinstance(server.storage, LocalStorage):
        (server.storage.root / marker).parent.mkdir(parents=True)
    server.storage.write(marker, layout.encode_doomed([Digest.parse(child.digest)]))
    index = make_index([child])
    refused = await push_manifest(client, "idx/repo", "multi", index, OCI_INDEX)
    assert refused.status_code == 400 and error_codes(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    assert not server.storage.files(f"{layout.revisions_dir('idx/repo')}/sha256/{sha256(index)[7:]}")
    gc(server.storage)  # a fresh marker is not stale: kept; the server still refuses
    refused = await push_manifest(client, "idx/repo", "multi", index, OCI_INDEX)
    assert error_codes(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    remove(server.storage, marker)
    assert (
        await push_manifest(client, "idx/repo", "multi", make_index([child]), OCI_INDEX)
    ).status_code == 201


# -- gc against a registry taking pushes ---------------------------------------------


class Pusher(threading.Thread):
    """Pushes images without pause: a fresh layer each, plus a base layer shared by a few.

    Bases are uploaded before GC starts and left unreferenced, so GC keeps dooming the base
    the next image re-uses: the client's HEAD says it exists, then the manifest follows.
    """

    def __init__(self, url: str, repo: str, bases: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.url, self.repo, self.bases = url, repo, bases
        self.stop = threading.Event()
        self.pushed: list[tuple[str, Image]] = []
        self.refused = 0
        self.error: BaseException | None = None

    def _blob(self, http: httpx.Client, data: bytes) -> None:
        digest = sha256(data)
        if http.head(f"/v2/{self.repo}/blobs/{digest}").status_code == 200:
            return
        done = http.post(f"/v2/{self.repo}/blobs/uploads/", params={"digest": digest}, content=data)
        assert done.status_code == 201, done.text

    def _push(self, http: httpx.Client, number: int) -> None:
        image = make_image((512,))
        base = self.bases[(number // 3) % len(self.bases)]
        document = image.manifest.replace(b'"layers": [', b'"layers": [' + _layer(base) + b",", 1)
        image = Image(image.config, [base, *image.layers], document)
        tag = f"t{number}"
        for _ in range(20):
            for blob in image.blobs:
                self._blob(http, blob)
            response = http.put(
                f"/v2/{self.repo}/manifests/{tag}",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            if response.status_code == 201:
                self.pushed.append((tag, image))
                return
            assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"], response.text
            self.refused += 1

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30) as http:
                number = 0
                while not self.stop.is_set():
                    self._push(http, number)
                    number += 1
        except BaseException as exc:  # reported by the test
            self.error = exc


def _layer(data: bytes) -> bytes:
    return (
        b'{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:'
        + hashlib.sha256(data).hexdigest().encode()
        + b'", "size": '
        + str(len(data)).encode()
        + b"}"
    )


async def test_gc_while_pushing_never_loses_a_pushed_image(served) -> None:
    server, client = served
    repo = "live/pushes"
    bases = [os.urandom(2048) for _ in range(60)]
    for base in bases:
        await push_blob(client, repo, base)
    pusher = Pusher(server.url, repo, bases)
    pusher.start()
    freed = 0
    try:
        for _ in range(6):
            done = await asyncio.to_thread(run_storage_command, server.storage, "gc", "--grace", "0s")
            assert done.returncode == 0, done.stderr
            match = SUMMARY.search(done.stdout)
            assert match is not None, done.stdout
            freed += int(match.group(1))
    finally:
        pusher.stop.set()
        await asyncio.to_thread(pusher.join, 60)
    assert pusher.error is None, repr(pusher.error)
    assert len(pusher.pushed) > 20 and freed > 0
    gc(server.storage, "--grace", "0s")
    for tag, image in pusher.pushed:
        await assert_pulls(client, repo, tag, image)
    assert not server.storage.files(layout.GC_DOOMED)
