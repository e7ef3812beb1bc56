"""The layer store: each layer unpacked once, in a directory of its own, shared by every image.

    <home>/layers/<alg>-<hex>/diff         the layer's files, whiteouts in overlayfs's format
    <home>/layers/<alg>-<hex>/layer.json   its size, entries and the blob it came from
    <home>/layers/.unpacking-<layer>-<uuid>/  a layer being unpacked (never used)
    <home>/layers/.locks/<alg>-<hex>       held while the layer is unpacked or removed

A layer is keyed by its diff ID (the digest of its uncompressed tar), so two images that
share a base share its directories. It is unpacked under a temporary name, checked
against both its blob digest and its diff ID, and renamed into place only then: a
killed or failed unpack leaves nothing a later run could mistake for a layer. Two
processes unpacking the same layer take the same per-layer lock; the second finds the
work done, and the next holder of the lock deletes what a killed holder left. Stacking
the directories (overlayfs, or ``snapshot.materialize``) gives the image's filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from oci import digest as digests
from oci.verify import Verifier, VerifyError

from .layers import LayerDigestMismatch, apply_layer
from .limits import UnpackBudget, UnpackLimits


@dataclass
class LayerInfo:
    diff_id: str
    size: int  # bytes of its regular files' data
    entries: int
    blob: str  # the compressed blob it was unpacked from
    unpacked: float


def _name(diff_id: str) -> str:
    if not digests.is_valid(diff_id):
        raise ValueError(f"invalid or unsupported diff ID: {diff_id[:150]!r}")
    algorithm, hexpart = digests.split(diff_id)
    return f"{algorithm}-{hexpart}"


class VerifyingStream(Protocol):
    """A layer blob's bytes; ``finish`` reads the rest and raises unless they are the blob's."""

    def read(self, size: int = -1, /) -> bytes: ...

    def finish(self, layer: str) -> None: ...


class ReadStream:
    """``readinto`` from ``read``: what decompressors that buffer their input (gzip) call."""

    def read(self, size: int = -1, /) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _VerifiedBlob(ReadStream):
    """The compressed stream, hashed as it is read, and checked once read to its end."""

    def __init__(self, stream: BinaryIO, digest: str) -> None:
        self._stream = stream
        self.verifier = Verifier(digest)

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self.verifier.update(data)
        return data

    def finish(self, layer: str) -> None:
        while self.read(1 << 20):
            pass
        try:
            self.verifier.check()
        except VerifyError as exc:
            raise LayerDigestMismatch(layer, f"digest mismatch, got {exc.actual}") from None


def verified(stream: BinaryIO, digest: str) -> VerifyingStream:
    """A stored or received blob, checked against ``digest`` when the unpack finishes."""
    return _VerifiedBlob(stream, digest)


class LayerStore:
    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "layers"

    def directory(self, diff_id: str) -> Path:
        return self.root / _name(diff_id)

    def path(self, diff_id: str) -> Path:
        """The layer's files: one lower directory of an overlay mount."""
        return self.directory(diff_id) / "diff"

    def has(self, diff_id: str) -> bool:
        return (self.directory(diff_id) / "layer.json").is_file()

    def info(self, diff_id: str) -> LayerInfo | None:
        try:
            return LayerInfo(**json.loads((self.directory(diff_id) / "layer.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[str]:
        """The diff IDs of every complete layer."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            algorithm, _, hexpart = entry.name.partition("-")
            if not entry.name.startswith(".") and (entry / "layer.json").is_file():
                found.append(f"{algorithm}:{hexpart}")
        return found

    @contextlib.contextmanager
    def locked(self, diff_id: str) -> Iterator[None]:
        """The layer's own lock: one process at a time unpacks or removes it."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / _name(diff_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def unpack(
        self,
        diff_id: str,
        stream: VerifyingStream,
        media_type: str,
        blob_digest: str,
        limits: UnpackLimits | None = None,
    ) -> bool:
        """Unpack one layer from its compressed ``stream``; False when it was there already.

        Both digests are checked before the layer becomes visible: a mismatch, a hostile
        entry, a full disk or an interruption leaves no trace in the store.
        """

        def populate(diff: Path) -> tuple[int, int]:
            budget = UnpackBudget(limits if limits is not None else UnpackLimits.from_env(), self.root)
            size = apply_layer(
                diff,
                cast(BinaryIO, stream),  # read() is all apply_layer uses
                media_type,
                blob_digest,
                budget,
                overlay=True,
                diff_id=diff_id,
            )
            stream.finish(blob_digest)
            return size, budget.layer_entries

        return self.install(diff_id, blob_digest, populate)

    def install(self, diff_id: str, blob_digest: str, populate: Callable[[Path], tuple[int, int]]) -> bool:
        """A layer whose files ``populate(diff_directory)`` writes (and verifies), returning
        (bytes, entries); False when it was there already. Under the layer's lock and a
        temporary name: a failed or killed populate leaves nothing that looks like a layer."""
        with self.locked(diff_id):
            if self.has(diff_id):
                return False
            name = _name(diff_id)
            for dead in self.root.glob(f".unpacking-{name}-*"):  # its writer held this lock: killed
                force_rmtree(dead)
            temporary = self.root / f".unpacking-{name}-{uuid.uuid4().hex}"
            try:
                (temporary / "diff").mkdir(parents=True)
                size, entries = populate(temporary / "diff")
                info = LayerInfo(diff_id, size, entries, blob_digest, time.time())
                (temporary / "layer.json").write_text(json.dumps(info.__dict__))
                os.rename(temporary, self.directory(diff_id))
            except BaseException:
                force_rmtree(temporary)
                raise
        return True

    def remove(self, diff_id: str) -> bool:
        with self.locked(diff_id):
            directory = self.directory(diff_id)
            if not directory.is_dir():
                return False
            doomed = self.root / f".removing-{uuid.uuid4().hex}"
            os.rename(directory, doomed)  # gone at once for readers, then deleted at leisure
        force_rmtree(doomed)
        return True

    def clean_leftovers(self) -> None:
        """Trees left by an unpack or removal that was killed halfway."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith((".unpacking-", ".removing-")):
                force_rmtree(entry)


def force_rmtree(path: Path) -> None:
    """Delete a tree even where the image made directories read-only (as a non-root user)."""

    def writable_and_retry(function: object, name: str, _: object) -> None:
        with contextlib.suppress(OSError):  # cleanup must not hide the error that caused it
            os.chmod(os.path.dirname(name), 0o700)
            if callable(function):
                function(name)

    with contextlib.suppress(OSError):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, onerror=writable_and_retry)
