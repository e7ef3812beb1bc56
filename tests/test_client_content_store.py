"""The client's content store: verified, resumable, and safe with several processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest

from puller.store.content_store import ContentStore, DigestMismatch


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_verified_blob_becomes_visible_only_on_commit(tmp_path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(3 << 20)
    with store.download(digest_of(data)) as download:
        assert download.offset == 0
        download.write(data[:1000])
        assert not store.has(digest_of(data))
        download.write(data[1000:])
        path = download.commit()
    assert path.read_bytes() == data
    assert store.read(digest_of(data)) == data


def test_mismatch_deletes_the_bytes_and_names_both_digests(tmp_path) -> None:
    store = ContentStore(tmp_path)
    claimed = digest_of(b"what the manifest promised")
    with store.download(claimed) as download:
        download.write(b"what the registry sent")
        with pytest.raises(DigestMismatch) as failure:
            download.commit()
    assert failure.value.expected == claimed
    assert failure.value.actual == digest_of(b"what the registry sent")
    assert not store.has(claimed)
    assert list((tmp_path / "partial").iterdir()) == []


def test_interrupted_download_resumes_from_its_offset(tmp_path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(100_000)
    with store.download(digest_of(data)) as first:
        first.write(data[:60_000])  # then the connection drops: close keeps the bytes
    with store.download(digest_of(data)) as second:
        assert second.offset == 60_000
        second.write(data[60_000:])
        second.commit()
    assert store.read(digest_of(data)) == data


def test_restart_discards_partial_bytes(tmp_path) -> None:
    store = ContentStore(tmp_path)
    data = b"0123456789"
    with store.download(digest_of(data)) as first:
        first.write(b"garbage")
    with store.download(digest_of(data)) as second:
        second.restart()  # the registry answered 200 to our Range request
        second.write(data)
        second.commit()
    assert store.read(digest_of(data)) == data


@pytest.mark.parametrize("digest", ["sha256:../../etc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "x"])
def test_hostile_digests_never_become_paths(tmp_path, digest: str) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(ValueError):
        store.path(digest)
    with pytest.raises(ValueError):
        store.download(digest)


def _fetch(root: str, data: bytes) -> None:
    store = ContentStore(root)
    with store.download(digest_of(data)) as download:
        if download.already_done:
            return
        download.restart()
        for start in range(0, len(data), 4096):
            download.write(data[start : start + 4096])
        download.commit()


def test_concurrent_processes_never_corrupt_a_blob(tmp_path) -> None:
    data = os.urandom(2 << 20)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fetch, args=(str(tmp_path), data)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert ContentStore(tmp_path).read(digest_of(data)) == data


def test_a_new_home_is_closed_to_other_users(tmp_path) -> None:
    # Unpacked trees keep setuid bits and device nodes when root: others must not reach them.
    store = ContentStore(tmp_path / "new-home")
    assert store.root.stat().st_mode & 0o777 == 0o700
