"""The storage contract: a handful of primitives every backend implements.

Modelled on distribution's storage driver. Paths are slash-separated, relative to
the backend's root, and made only of validated components (see ``check_path``):
the registry above builds blobs, links, tags and uploads on these primitives once,
for every backend. Nothing here knows about HTTP or about registries.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

# Components start with a letter, digit or underscore, so "." and ".." can never match;
# one pattern for the whole path because this check sits on every request's path.
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
MAX_PATH = 4096


class StorageError(Exception):
    """Base class for backend failures the registry may want to translate."""


class PathNotFound(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class InvalidPath(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"invalid storage path: {path!r}")
        self.path = path


class WriterBusy(StorageError):
    """Another writer (in this or another process) holds the path for appending."""


class StorageFull(StorageError):
    """The storage has no room (ENOSPC, EDQUOT): nothing of the failed write became visible.

    A distinct type so the registry can answer 507 and report itself not ready for writes,
    instead of a bare 500, while reads go on.
    """


class ShortWrite(StorageError):
    """A writer holds fewer (or more) bytes than were declared: it is never committed."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    mtime: float
    is_dir: bool


def check_path(path: str) -> str:
    """Reject anything but plain relative components, so no caller can escape the root.

    The registry validates names and digests before building paths; this is the
    second, independent line: ``..``, empty components, NUL and absolute paths never
    reach a backend.
    """
    if len(path) > MAX_PATH or not _PATH.fullmatch(path):
        raise InvalidPath(path)
    return path


class FileWriter(ABC):
    """A streamed write to one path; nothing is visible at the path until ``commit``.

    In append mode the writer continues an existing file (``PathNotFound`` if there is
    none) and holds it exclusively until closed, so two processes can never interleave
    appends, and a file moved away while a writer waited for it is never written.
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """Bytes in the file so far, including what existed before an append."""

    @abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    async def sync(self) -> None:
        """Make what was written durable while keeping the path locked."""

    @abstractmethod
    async def commit(self) -> None:
        """Make what was written visible and release the writer.

        A new file is durable once committed; an append is durable only after ``sync``.
        """

    @abstractmethod
    async def cancel(self) -> None:
        """Discard what this writer wrote (an append rolls back to its start size)."""


class StorageDriver(ABC):
    """Read, write, stat, list, move, delete: all the registry needs from storage.

    The abstract methods are the contract, as in distribution's storagedriver.go
    (GetContent, PutContent, Reader, Writer, Stat, List, Move, Delete). The others have
    defaults built on them: a backend overrides them to go faster (``walk``,
    ``delete_files``) or to offer what its medium has (``url_for``, ``free_space``,
    ``purge_incomplete``, ``close``).
    """

    name: str = "abstract"

    @abstractmethod
    async def get_content(self, path: str) -> bytes:
        """Read a small file whole (links, tags, manifests, upload metadata)."""

    @abstractmethod
    async def put_content(self, path: str, data: bytes) -> None:
        """Replace a small file atomically: readers see the old or the new bytes."""

    @abstractmethod
    def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (or to the end) starting at ``offset``."""

    @abstractmethod
    async def writer(self, path: str, append: bool = False, size: int | None = None) -> FileWriter:
        """A streamed write to ``path``. A new file given its declared ``size`` is checked at
        ``commit``: any other byte count cancels it and raises ``ShortWrite``, so a truncated
        body is never stored under a name that promises all of it."""

    @abstractmethod
    async def stat(self, path: str) -> FileInfo:
        """Raise ``PathNotFound`` when nothing is at ``path``."""

    @abstractmethod
    async def list_children(self, path: str) -> list[str]:
        """Names of the direct children of a directory ([] when it does not exist); the root is ``""``."""

    @abstractmethod
    async def move(self, source: str, dest: str) -> None:
        """Atomically rename ``source`` to ``dest``, replacing what was there."""

    @abstractmethod
    async def delete(self, path: str) -> None:
        """Remove a file or a whole directory tree; missing paths are not an error."""

    async def delete_files(self, paths: list[str]) -> None:
        """Remove many files, each with the folder it leaves empty, in as few requests as the
        backend allows (S3 deletes 1,000 keys per request). Missing files are not an error.

        GC deletes thousands of files it already found with ``walk``; ``delete`` would list
        each one's subtree first.
        """
        for path in paths:
            await self.delete(path)

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        """Every file below ``path``, recursively, in no particular order (nothing when absent).

        The default is ``list_children`` and ``stat`` per entry; backends that can enumerate a whole
        tree in a few requests (S3's flat listing) override it: GC and fsck read the whole
        store this way, and a round trip per file is what makes them slow.
        """
        for name in await self.list_children(path):
            child = f"{path}/{name}" if path else name
            info = await self.stat(child)
            if info.is_dir:
                async for found in self.walk(child):
                    yield found
            else:
                yield info

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except PathNotFound:
            return False
        return True

    async def free_space(self) -> int | None:
        """Bytes a write may still use, where the medium can tell cheaply (None: unknown)."""
        return None

    async def url_for(self, path: str, expires: float) -> str | None:
        """A URL a client may fetch ``path`` from directly, or None where there is none."""
        return None

    async def open_local(self, path: str) -> BinaryIO | None:
        """``path`` opened for reading where it is a local file (the filesystem backend), so a
        server can hand it to the kernel (``sendfile``) without a byte passing through Python;
        None where the medium has no such file. ``PathNotFound`` when nothing is there."""
        return None

    async def purge_incomplete(self, older_than: float) -> int:
        """Remove invisible leftovers of writers that died before ``older_than`` (epoch seconds)."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release clients and pools; the filesystem backend has none."""

    # Last in the class: below this line ``list`` would name the method, not the builtin.


class Opener(Protocol):
    """How a backend module opens a store: its ``open_location`` function.

    ``location`` is the ``--root`` without its ``scheme://``. Every backend takes ``fsync``
    and ``wait`` (and may ignore them); ``options`` are its own settings, and an unknown
    one is a ``TypeError``.
    """

    def __call__(self, location: str, /, *, fsync: bool, wait: float, **options: Any) -> StorageDriver: ...
