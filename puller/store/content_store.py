"""The client's local content store: blobs by digest, verified, shared by every image.

    <home>/blobs/<alg>/<hex>      verified content, never modified once there
    <home>/partial/<alg>-<hex>    a download in progress (resumable with Range)

A blob becomes visible only by an atomic rename after its digest checked out, so a
reader never sees a half or wrong blob. A download holds an exclusive ``flock`` on its
partial file: a second process fetching the same blob waits for the first and then
finds it done, instead of writing the same file at the same time.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from oci import digest as digests
from oci.verify import Verifier, VerifyError


class DigestMismatch(Exception):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


def default_home() -> Path:
    if home := os.environ.get("PIER_HOME"):
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "pier"


def keep_layer_blobs(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether layer blobs stay once unpacked (the default): push and save need them.

    ``PIER_KEEP_LAYER_BLOBS=0`` keeps only the unpacked layers, for a machine that only runs
    images; its images cannot be pushed or saved until pulled again with blobs kept.
    """
    return environ.get("PIER_KEEP_LAYER_BLOBS", "1").strip().lower() not in ("0", "false", "no", "off")


def _split(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest pier verifies: nothing else can become a path here."""
    if not digests.is_valid(digest):
        raise ValueError(f"invalid or unsupported digest: {digest[:150]!r}")
    return digests.split(digest)


class BlobDownload:
    """One blob being written: append bytes, then ``commit`` (verify and publish) or ``abort``.

    ``offset`` is how many bytes an earlier, interrupted attempt already left: the caller
    asks the registry for the rest with ``Range: bytes=<offset>-``.
    """

    def __init__(self, store: ContentStore, digest: str) -> None:
        algorithm, hexpart = _split(digest)
        self.digest = digest
        self._store = store
        self._partial = store.root / "partial" / f"{algorithm}-{hexpart}"
        self._partial.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_locked()
        self._verifier = Verifier(digest)
        with open(self._fd, "rb", closefd=False) as existing:
            existing.seek(0)
            while block := existing.read(1 << 20):
                self._verifier.update(block)

    def _open_locked(self) -> int:
        """Open and lock the partial file, waiting while another process downloads it.

        The winner renames its partial file into place when done: a waiter that then gets
        the lock holds the finished blob's inode, so it lets go and opens a fresh file.
        """
        while True:
            fd = os.open(self._partial, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(self._partial).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    @property
    def partial_path(self) -> Path:
        """Where the bytes received so far are (read them, never write them)."""
        return self._partial

    @property
    def already_done(self) -> bool:
        """Another process finished this blob while we waited for its lock."""
        return self._store.has(self.digest)

    @property
    def offset(self) -> int:
        """Bytes written so far, an earlier attempt's included."""
        return self._verifier.received

    def write(self, data: bytes) -> None:
        self._verifier.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def feed(self, data: bytes) -> None:
        """Hash bytes that are not kept (``PIER_KEEP_LAYER_BLOBS=0``): verified, never written."""
        self._verifier.update(data)

    def restart(self) -> None:
        """Throw away the partial bytes (the registry ignored our Range request)."""
        os.ftruncate(self._fd, 0)
        self._verifier.restart()

    def commit(self) -> Path:
        try:
            self._verifier.check()
        except VerifyError as exc:
            self.abort()
            raise DigestMismatch(self.digest, str(exc.actual)) from None
        os.fsync(self._fd)
        target = self._store.path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._partial, target)
        self._close()
        return target

    @property
    def ranges_path(self) -> Path:
        """Where a download in parallel ranges writes (it has holes until done: never resumed)."""
        return self._partial.with_name(self._partial.name + ".ranges")

    def publish(self, path: Path, verifier: Verifier) -> Path:
        """Publish bytes written and hashed elsewhere (``ranges_path``) once they verify."""
        try:
            verifier.check()
        except VerifyError as exc:
            path.unlink(missing_ok=True)
            raise DigestMismatch(self.digest, str(exc.actual)) from None
        target = self._store.path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return target

    def check(self) -> None:
        """Verify what arrived and drop it: for blobs the user chose not to keep."""
        try:
            self._verifier.check()
        except VerifyError as exc:
            raise DigestMismatch(self.digest, str(exc.actual)) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Delete the partial bytes: used when they are known to be wrong."""
        self._partial.unlink(missing_ok=True)
        self._close()

    def close(self) -> None:
        """Keep the partial bytes for a later resume (an interrupted transfer)."""
        self._close()

    def _close(self) -> None:
        if self._fd >= 0 and os.fstat(self._fd).st_size == 0 and self._partial.exists():
            self._partial.unlink()  # nothing to resume: leave no empty file behind
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> BlobDownload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ContentStore:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_home()
        # 0700: unpacked trees may hold setuid files and device nodes, as the images do.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Shared while content is being added or used; exclusive while garbage is deleted.

        A pull holds it shared from its first blob to its ref, so ``rmi`` never deletes
        blobs that an unfinished pull has fetched but not yet tagged.
        """
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def path(self, digest: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "blobs" / algorithm / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put(self, digest: str, data: bytes) -> Path:
        """Store small content (manifests, configs) already in memory, verified."""
        with self.download(digest) as download:
            if download.already_done:
                return self.path(digest)
            download.restart()
            download.write(data)
            return download.commit()

    def download(self, digest: str) -> BlobDownload:
        return BlobDownload(self, digest)

    def _ref_path(self, name: str, tag: str) -> Path:
        return self.root / "refs" / quote(name, safe="/") / "tags" / quote(tag, safe="")

    def set_ref(self, name: str, tag: str, digest: str) -> None:
        """Record what a tag pointed to when it was pulled (atomically replaced)."""
        _split(digest)
        target = self._ref_path(name, tag)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temp.write_text(digest)
        os.replace(temp, target)

    def get_ref(self, name: str, tag: str) -> str | None:
        try:
            return self._ref_path(name, tag).read_text()
        except FileNotFoundError:
            return None

    def delete_ref(self, name: str, tag: str) -> bool:
        try:
            self._ref_path(name, tag).unlink()
        except FileNotFoundError:
            return False
        return True

    def refs(self) -> Iterator[tuple[str, str, str]]:
        """(name, tag, digest) of every tag in the store, sorted."""
        base = self.root / "refs"
        for path in sorted(base.glob("**/tags/*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            name = unquote(str(path.parent.parent.relative_to(base)))
            try:
                yield name, unquote(path.name), path.read_text()
            except FileNotFoundError:
                continue

    def blobs(self) -> Iterator[str]:
        for directory in sorted((self.root / "blobs").glob("*")):
            for path in directory.iterdir():
                yield f"{directory.name}:{path.name}"

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
