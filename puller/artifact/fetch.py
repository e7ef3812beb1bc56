"""Write one artifact layer's file (or, for a tar layer, files) into a directory, verified.

Every file is written under a temporary name beside its final one and renamed into
place only after the layer's digest checks out: a corrupt or cut-off layer leaves no
file under its final name. A big raw file comes as parallel byte ranges written into
place (``transfer.ranged``), each range resumed where it broke off; the digest is taken
in order as the ranges fill. A tar layer (a group of small files) is read as a stream:
only directories and regular files, each path checked, nothing outside the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import httpx
import zstandard
from isal import igzip

from oci.verify import Verifier, VerifyError

from ..errors import PierError
from ..transfer.pull import Remote, range_min
from ..transfer.ranged import RangedBlob, RangeError
from ..transfer.raw_body import RawBodyLost, RawResponse
from ..transfer.transport import ConnectionLost, error_message
from ..unpack.layer_store import ReadStream
from ..unpack.limits import UnpackLimits
from .modelpack import layer_mode, parse_layer_type
from .paths import PARTIAL_SUFFIX, Claims, PlacedFile, UnsafePath, check_path, directory_of

CHUNK = 1 << 20
RANGE_PARTS = 4
ATTEMPTS = 3
SYNC_FILE_RANGE_WRITE = 2  # a small file's GET, from its start, when the connection drops
MAX_TAR_ENTRIES = 1_000_000
ORAS_UNPACK = "io.deis.oras.content.unpack"  # oras's mark on a layer that is a directory's archive

Report = Callable[[int], None]  # bytes received so far of this layer


class FetchError(PierError):
    """A layer that could not be fetched or failed its check; the message says which and why."""


class _Stream(ReadStream):
    """A GET's body as a file-like stream, hashed as it is read."""

    def __init__(self, chunks: Iterator[bytes], verifier: Verifier, report: Report) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.verifier = verifier
        self.report = report

    def read(self, size: int = -1, /) -> bytes:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return b""
            try:
                self.verifier.update(self._buffer)
            except VerifyError:
                raise FetchError(
                    f"blob {self.verifier.expected}: the registry sent more than its size"
                ) from None
            self.report(self.verifier.received)
        count = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data


def _check(verifier: Verifier, digest: str) -> None:
    try:
        verifier.check()
    except VerifyError as exc:
        raise FetchError(f"blob {digest}: digest mismatch, got {exc.actual}; nothing was written") from None


def fetch_raw(
    remote: Remote, descriptor: dict, root: Path, path: str, report: Report, parts: int = RANGE_PARTS
) -> os.stat_result:
    """One file whose blob is the file; the stat of the file now in place.

    A big one comes as ``parts`` ranges (one when other big files fill the connections:
    each file then lands sequentially), resumed where a range broke off. In one stream, a
    partial file a killed pull left is hashed and continued from its end.
    """
    digest, size = descriptor["digest"], int(descriptor["size"])
    smallest_ranged = range_min()  # PIER_PULL_RANGE_MIN, as for image layers
    mode = layer_mode(descriptor) or 0o644
    mode = (mode | 0o644) & 0o755  # readable by its owner and the container; never setuid or world-writable
    with PlacedFile(root, path, digest, mode) as placed:
        if size >= smallest_ranged and parts > 1:
            ranged = RangedBlob(
                lambda headers: _open_range(remote, digest, headers),
                digest,
                size,
                placed.proc_path,
                parts,
                report,
                opener=lambda: os.dup(placed.fd),
            )
            try:
                while ranged.read(CHUNK):  # in order: the digest is known when the last range lands
                    pass
            except RangeError as exc:
                raise FetchError(str(exc)) from None
            finally:
                ranged.close()
            verifier = ranged.verifier
        else:
            verifier = _sequential(remote, placed, digest, size, report)
        try:
            _check(verifier, digest)
        except FetchError:
            placed.discard = True  # bad bytes: never resumed
            raise
        return placed.commit()


@contextlib.contextmanager
def _open_range(
    remote: Remote, digest: str, headers: dict[str, str]
) -> Iterator[httpx.Response | RawResponse]:
    """A range of a blob, read off its socket where it can be (see ``raw_body``), else by httpx."""
    raw = remote.raw_blob(digest, headers)
    if raw is not None:
        with raw:
            yield raw
        return
    with remote.blob(digest, headers) as response:
        yield response


class _Landing:
    """Where a sequential download stands: bytes hashed are bytes written, so a retry resumes
    with ``Range`` at ``written`` and the digest carries on where it was."""

    def __init__(self, fd: int, digest: str, size: int, report: Report, offset: int = 0) -> None:
        self.fd, self.digest, self.size, self.report = fd, digest, size, report
        self.verifier = Verifier(digest, size)
        self.written = 0
        if 0 < offset <= size:  # a killed pull's bytes: hashed again, then continued after
            while self.written < offset:
                piece = os.pread(fd, min(CHUNK, offset - self.written), self.written)
                if not piece:
                    break
                self.verifier.update(piece)
                self.written += len(piece)
        if self.written != offset:
            self.verifier, self.written = Verifier(digest, size), 0
        os.ftruncate(fd, self.written)
        os.lseek(fd, self.written, os.SEEK_SET)

    def begin(self, status: int, content_range: str, length: int | None) -> None:
        """Check the answer to a (resumed) GET before its body is taken."""
        if self.written and status == 200:  # Range ignored: start over
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.verifier, self.written = Verifier(self.digest, self.size), 0
        elif self.written and not (status == 206 and content_range.startswith(f"bytes {self.written}-")):
            raise FetchError(f"blob {self.digest}: the registry answered a different range than asked")
        if length is not None and self.written + length > self.size:
            raise FetchError(f"blob {self.digest} is larger than its {self.size} bytes")

    def take(self, piece: memoryview | bytes | bytearray) -> None:
        try:
            self.verifier.update(piece)
        except VerifyError:
            raise FetchError(f"blob {self.digest} is larger than its {self.size} bytes") from None
        view = memoryview(piece)
        while view:
            view = view[os.write(self.fd, view) :]
        self.written += len(piece)
        self.report(self.written)


def _sequential(remote: Remote, placed: PlacedFile, digest: str, size: int, report: Report) -> Verifier:
    """The blob in one stream, hashed as it is written; a dropped connection resumes with
    ``Range`` at the byte it reached (a registry that ignores it sends the whole again).

    The body is read straight off the socket where ``raw_body`` can (a 1 MiB buffer, one
    copy per byte), else through httpx's pieces, joined into 1 MiB writes.
    """
    landing = _Landing(placed.fd, digest, size, report, placed.offset)
    failures = 0
    while True:
        if size and landing.written == size:  # all there already (a pull killed before its rename)
            return landing.verifier
        headers = {"Range": f"bytes={landing.written}-"} if landing.written else None
        try:
            raw = remote.raw_blob(digest, headers)
            if raw is not None:
                with raw:
                    landing.begin(raw.status_code, raw.headers.get("content-range", ""), raw.length)
                    buffer = memoryview(bytearray(CHUNK))
                    while count := raw.readinto(buffer):  # a break loses only this unwritten read
                        landing.take(buffer[:count])
                return landing.verifier
            with remote.blob(digest, headers) as response:
                if response.status_code not in (200, 206):
                    raise FetchError(f"blob {digest}: {error_message(response)}")
                landing.begin(response.status_code, response.headers.get("content-range", ""), None)
                pending = bytearray()
                try:
                    for piece in response.iter_bytes():  # as received: no re-chunking copies
                        pending += piece
                        if len(pending) >= CHUNK:
                            landing.take(pending)
                            pending.clear()
                finally:
                    if pending:  # what arrived before a break is kept: the retry resumes after it
                        landing.take(pending)
            return landing.verifier
        except (ConnectionLost, RawBodyLost) as exc:
            failures += 1
            if failures > ATTEMPTS:
                raise FetchError(f"blob {digest}: {exc}") from None


def _decompressor(packing: str, stream: ReadStream) -> BinaryIO:
    readable = cast(BinaryIO, stream)  # read() is all either decompressor uses
    if packing == "tar+gzip":
        return cast(BinaryIO, igzip.IGzipFile(fileobj=readable, mode="rb"))
    if packing == "tar+zstd":
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(readable))
    return readable


def _sync(directory_fd: int) -> None:
    """Flush a whole filesystem once (``syncfs``) rather than fsync thousands of small files."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(directory_fd) != 0:
        os.sync()


def fetch_tar(remote: Remote, descriptor: dict, root: Path, claims: Claims, report: Report) -> list[Path]:
    """A tar layer's files. Entries land in a staging folder inside ``root`` under numbers;
    once the whole layer verified, its names are claimed (see ``Claims``) and renamed into
    place. Decompressed bytes and entries are bounded as an image layer's are."""
    digest, size = descriptor["digest"], int(descriptor["size"])
    packing = packing_of(descriptor)
    limits = UnpackLimits.from_env()
    staging = root / f".pier-staging-{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    staging.mkdir(mode=0o700)
    staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    names: list[str] = []
    unpacked = 0
    verifier = Verifier(digest, size)
    what = f"layer {digest[:19]}"
    try:
        with remote.blob(digest) as response:
            if response.status_code != 200:
                raise FetchError(f"blob {digest}: {error_message(response)}")
            body = _Stream(response.iter_bytes(), verifier, report)
            try:
                with tarfile.open(fileobj=_decompressor(packing, body), mode="r|") as archive:
                    for count, member in enumerate(archive):
                        if count >= min(MAX_TAR_ENTRIES, limits.max_layer_entries):
                            raise FetchError(f"blob {digest} has more than {count} entries")
                        relative = member.name.removeprefix("./").rstrip("/")
                        if member.isdir() and relative in ("", "."):
                            continue  # the archive's own root, as `tar -C dir .` writes it
                        name = check_path(relative, what)
                        if member.isdir():
                            continue
                        if not member.isfile():
                            raise UnsafePath(
                                f"{what}: {name} is a link or device; artifact tars hold only files"
                            )
                        unpacked += member.size
                        if unpacked > limits.max_layer_bytes:
                            raise FetchError(
                                f"blob {digest} unpacks to more than {limits.max_layer_bytes} bytes "
                                "(PIER_UNPACK_MAX_LAYER_BYTES)"
                            )
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                        fd = os.open(str(len(names)), flags, 0o600, dir_fd=staging_fd)
                        try:
                            extracted = archive.extractfile(member)
                            while extracted is not None and (block := extracted.read(CHUNK)):
                                os.write(fd, block)
                            os.fchmod(fd, (member.mode | 0o644) & 0o755)
                        finally:
                            os.close(fd)
                        names.append(name)
            except (tarfile.TarError, EOFError, zstandard.ZstdError, igzip.BadGzipFile) as exc:
                raise FetchError(f"blob {digest}: not a readable tar ({exc})") from None
            while body.read(CHUNK):  # the tar's end padding: the digest covers it
                pass
        _check(verifier, digest)
        claims.claim(names, what)  # no entry twice, none over another's folder
        _sync(staging_fd)
        for number, name in enumerate(names):
            with directory_of(root, name) as (parent_fd, last):
                try:
                    os.rename(str(number), last, src_dir_fd=staging_fd, dst_dir_fd=parent_fd)
                except IsADirectoryError:
                    raise UnsafePath(
                        f"{name} in {root} is a directory: not replacing it with a file"
                    ) from None
    finally:
        os.close(staging_fd)
        shutil.rmtree(staging, ignore_errors=True)
    return [root / name for name in names]


def packing_of(descriptor: dict) -> str:
    """raw, tar, tar+gzip or tar+zstd: ModelPack's by its media type; another artifact's file is
    raw unless oras marked it as a directory archive to unpack."""
    media_type = str(descriptor.get("mediaType", ""))
    kind = parse_layer_type(media_type)
    if kind is not None:
        return kind[1]
    if (descriptor.get("annotations") or {}).get(ORAS_UNPACK) == "true":
        return (
            "tar+zstd"
            if media_type.endswith("+zstd")
            else "tar+gzip"
            if media_type.endswith("gzip")
            else "tar"
        )
    return "raw"


def check_layer_path(descriptor: dict) -> str:
    from .modelpack import layer_path

    path = layer_path(descriptor)
    if path is None:
        raise UnsafePath(
            f"layer {descriptor.get('digest', '')[:19]} names no file path (no filepath or title annotation)"
        )
    return check_path(path.removesuffix("/"), f"layer {descriptor.get('digest', '')[:19]}")
