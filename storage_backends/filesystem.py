"""Local disk backend: every write lands in a temporary file, is fsynced, then renamed.

A process killed at any moment leaves at most a hidden ``.tmp-*`` file, never a
partial file at a real path. ``os.write`` may write less than it was given (a nearly
full disk does exactly that): every write loops until all bytes are down, and a file is
renamed into place only when its size on disk is the size written (and declared).
ENOSPC and EDQUOT become ``StorageFull``, after the failed write is undone. Appends
(upload sessions) hold an exclusive ``flock`` so that several server processes sharing
one folder cannot interleave chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

from .base import (
    FileInfo,
    FileWriter,
    Opener,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageFull,
    WriterBusy,
    check_path,
)

READ_CHUNK = 4 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range, to start writeback of each block as soon as it is written.

    Without it, a large upload's data all reaches the disk during the final fsync, after the
    last byte arrived; with it, the disk writes while the network still delivers.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start_writeback(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: errors are ignored

    return start_writeback


_start_writeback = _load_sync_file_range()

P = ParamSpec("P")
T = TypeVar("T")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _full_is_storage_full(function: Callable[P, T]) -> Callable[P, T]:
    """Turn "no space" (ENOSPC, EDQUOT) from any step of a write into ``StorageFull``."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise StorageFull(f"no space left on the storage: {exc.strerror}") from exc
            raise

    return wrapper


def _write_fully(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written: one call may write only part (a full disk)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:  # not expected from a regular file, but never loop forever
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _check_size(fd: int, expected: int, target: Path) -> None:
    """The bytes on disk are the bytes written: else the file must not be renamed into place."""
    actual = os.fstat(fd).st_size
    if actual != expected:
        raise ShortWrite(f"{target.name}: {actual} bytes on disk, {expected} written")


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable. A folder that is gone already was emptied by a
    concurrent delete of what was just renamed into it: nothing is left to make durable, and
    the write must not fail (or be retried, which would write a deleted file again)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FilesystemWriter(FileWriter):
    def __init__(
        self, target: Path, fd: int, start: int, temp: Path | None, fsync: bool, declared: int | None = None
    ):
        self._target = target
        self._fd = fd
        self._start = start
        self._size = start
        self._temp = temp  # None when appending in place
        self._fsync = fsync
        self._declared = declared  # the size a new file must have to be committed
        self._closed = False
        # Writes run in worker threads: commit/cancel wait for any write still running.
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @_full_is_storage_full
    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed writer")
            try:
                _write_fully(self._fd, data)
            except BaseException:
                # Undo the part that was written: the file holds exactly ``size`` bytes, so
                # a chunk that failed for lack of space leaves the upload resumable.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            if self._fsync and _start_writeback is not None and len(data) >= 1 << 20:
                _start_writeback(self._fd, self._size, len(data))
            self._size += len(data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        await asyncio.to_thread(self._write_all, data)

    @_full_is_storage_full
    def _commit(self) -> None:
        with self._lock:
            if not self._closed:
                self._commit_locked()

    def _commit_locked(self) -> None:
        if self._temp is not None:
            try:
                if self._declared is not None and self._declared != self._size:
                    written, declared = self._size, self._declared
                    raise ShortWrite(f"{self._target.name}: {written} bytes written, {declared} declared")
                _check_size(self._fd, self._size, self._target)
                # A new file is fsynced before its rename makes it visible. An append (an
                # upload chunk) is not: a chunk lost to a power cut shows as a shorter upload
                # that the client resumes, and its blob is fsynced by ``sync`` before the move.
                if self._fsync:
                    os.fsync(self._fd)
            except BaseException:
                self._cancel_locked()
                raise
        os.close(self._fd)
        self._closed = True
        if self._temp is not None:
            try:
                os.replace(self._temp, self._target)
            except BaseException:
                self._temp.unlink(missing_ok=True)
                raise
            if self._fsync:
                _fsync_dir(self._target.parent)

    async def commit(self) -> None:
        if not self._closed:
            await asyncio.to_thread(self._commit)

    @_full_is_storage_full
    def _sync(self) -> None:
        with self._lock:
            if not self._closed and self._fsync:
                os.fsync(self._fd)

    async def sync(self) -> None:
        await asyncio.to_thread(self._sync)

    def _cancel(self) -> None:
        with self._lock:
            if not self._closed:
                self._cancel_locked()

    def _cancel_locked(self) -> None:
        try:
            if self._temp is None:
                os.ftruncate(self._fd, self._start)
        finally:
            os.close(self._fd)
            self._closed = True
            if self._temp is not None:
                self._temp.unlink(missing_ok=True)

    async def cancel(self) -> None:
        if not self._closed:
            await asyncio.to_thread(self._cancel)


class FilesystemDriver(StorageDriver):
    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self._root_slash = str(self.root).rstrip("/") + "/"
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def _full(self, path: str) -> Path:
        return self.root / check_path(path)

    def _os_path(self, path: str) -> str:
        """``_full`` as a plain string: the per-request reads skip pathlib's parsing."""
        return self._root_slash + check_path(path)

    # -- small files -------------------------------------------------------------
    async def open_local(self, path: str) -> BinaryIO | None:
        """The file itself, unbuffered: an open is one system call, done inline."""
        try:
            return open(self._os_path(path), "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None

    def _get_content(self, path: str) -> bytes:
        try:
            with open(self._os_path(path), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None

    async def get_content(self, path: str) -> bytes:
        # Inline, not in a thread: links and tags are tiny and page-cached, and a thread hop
        # (waiting for the GIL) cost more than the read: manifest GETs went from ~1.8k to
        # ~5k requests/s on this machine without it.
        return self._get_content(path)

    def _put_content(self, path: str, data: bytes) -> None:
        for attempt in range(3):
            try:
                return self._put_content_once(path, data)
            except FileNotFoundError:
                # A concurrent delete took the parent folder away: make it again.
                if attempt == 2:
                    raise

    def _put_content_once(self, path: str, data: bytes) -> None:
        target = self._full(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = _tmp_name(target)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_fully(fd, data)
                _check_size(fd, len(data), target)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(target.parent)

    @_full_is_storage_full
    def _put_content_checked(self, path: str, data: bytes) -> None:
        self._put_content(path, data)

    async def put_content(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_content_checked, path, data)

    # -- streams -----------------------------------------------------------------
    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        full = self._full(path)
        try:
            handle = await asyncio.to_thread(open, full, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None
        try:
            if offset:
                handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    @_full_is_storage_full
    def _open_writer(self, path: str, append: bool, size: int | None = None) -> _FilesystemWriter:
        target = self._full(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            temp = _tmp_name(target)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            return _FilesystemWriter(target, fd, 0, temp, self.fsync, size)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The file may have been moved away (committed) between open and lock.
            if os.stat(target).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            os.close(fd)
            raise PathNotFound(path) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WriterBusy(path) from None
            raise
        start = os.fstat(fd).st_size
        return _FilesystemWriter(target, fd, start, None, self.fsync)

    async def writer(self, path: str, append: bool = False, size: int | None = None) -> FileWriter:
        return await asyncio.to_thread(self._open_writer, path, append, size)

    async def free_space(self) -> int | None:
        st = await asyncio.to_thread(os.statvfs, self.root)
        return st.f_bavail * st.f_frsize

    # -- metadata ----------------------------------------------------------------
    def _stat(self, path: str) -> FileInfo:
        try:
            st = os.stat(self._os_path(path))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        is_dir = (st.st_mode & 0o170000) == 0o040000
        return FileInfo(path=path, size=st.st_size, mtime=st.st_mtime, is_dir=is_dir)

    async def stat(self, path: str) -> FileInfo:
        return self._stat(path)  # inline, like get_content: one syscall

    def _list_children(self, path: str) -> list[str]:
        directory = self._full(path) if path else self.root
        try:
            return sorted(n for n in os.listdir(directory) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def list_children(self, path: str) -> list[str]:
        return await asyncio.to_thread(self._list_children, path)

    def _delete_files(self, paths: list[str]) -> None:
        for path in paths:
            full = self._full(path)
            try:
                full.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                self._delete(path)
                continue
            with contextlib.suppress(OSError):
                full.parent.rmdir()  # only when empty; a writer re-creates it if it needs it

    async def delete_files(self, paths: list[str]) -> None:
        await asyncio.to_thread(self._delete_files, paths)

    def _walk_some(self, pending: list[str], limit: int = 2048) -> list[FileInfo]:
        """Scan folders from ``pending`` (consumed in place) until ``limit`` files are found."""
        found: list[FileInfo] = []
        while pending and len(found) < limit:
            folder = pending.pop()
            try:
                entries = list(os.scandir(self._full(folder) if folder else self.root))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # a writer's temporary file, or a tree being deleted
                path = f"{folder}/{entry.name}" if folder else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(FileInfo(path, st.st_size, st.st_mtime, False))
                except FileNotFoundError:
                    continue  # deleted while we looked
        return found

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        pending = [check_path(path)] if path else [""]
        while pending:
            for info in await asyncio.to_thread(self._walk_some, pending):
                yield info

    @_full_is_storage_full
    def _move(self, source: str, dest: str) -> None:
        src, dst = self._full(source), self._full(dest)
        for attempt in range(3):
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, dst)
                break
            except FileNotFoundError:
                # The source is gone, or a concurrent delete took the new parent away: retry that.
                if attempt == 2 or not src.exists():
                    raise PathNotFound(source) from None
        if self.fsync:
            _fsync_dir(dst.parent)

    async def move(self, source: str, dest: str) -> None:
        await asyncio.to_thread(self._move, source, dest)

    def _delete(self, path: str) -> None:
        full = self._full(path)
        try:
            if full.is_dir() and not full.is_symlink():
                # Rename first so a reader never sees a half-deleted tree.
                doomed = _tmp_name(full)
                os.replace(full, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            else:
                full.unlink()
        except FileNotFoundError:
            pass

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._delete, path)

    def _purge_incomplete(self, older_than: float) -> int:
        removed = 0
        for folder, dirs, files in os.walk(self.root):
            for name in [*files, *dirs]:
                if not name.startswith(".tmp-"):
                    continue
                full = os.path.join(folder, name)
                try:
                    if os.lstat(full).st_mtime >= older_than:
                        continue
                    if name in dirs:
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        os.unlink(full)
                    removed += 1
                except FileNotFoundError:
                    pass
            dirs[:] = [d for d in dirs if not d.startswith(".tmp-")]
        return removed

    async def purge_incomplete(self, older_than: float) -> int:
        """Remove temporary files of writers killed mid-write (``.tmp-*``) older than the cutoff."""
        return await asyncio.to_thread(self._purge_incomplete, older_than)


def open_location(
    location: str, /, *, fsync: bool = True, wait: float = 0.0, **options: Any
) -> FilesystemDriver:
    """The ``file`` backend's ``Opener``: ``location`` is a folder, created if missing."""
    if options:
        raise TypeError(f"the filesystem backend takes no options, not {', '.join(sorted(options))}")
    return FilesystemDriver(location, fsync=fsync)


_OPENER: Opener = open_location  # mypy checks it against the contract
