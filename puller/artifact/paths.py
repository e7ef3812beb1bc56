"""Paths from annotations and tar entries are untrusted: check them, then write only inside the target.

A path is accepted only when it is relative, '/'-separated, without ``.``/``..``
components, empty components, backslashes or control characters, and short. The set of
paths of one artifact must not repeat a path, nor use a file's path as another's
directory. Writing goes through directory file descriptors opened with ``O_NOFOLLOW``
one component at a time, so a symlink already in the target (or planted while pulling)
is never followed out of it; the last component is replaced by a rename, which
replaces a symlink rather than writing through it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import PierError

MAX_PATH = 4096
MAX_COMPONENT = 255
PARTIAL_SUFFIX = ".pier-partial"


class UnsafePath(PierError):
    """An artifact names a path that would write outside its directory, or twice."""


def check_path(path: str, what: str = "artifact") -> str:
    """``path`` if it stays inside the target directory, else ``UnsafePath`` saying why."""
    shown = path[:200].encode("unicode_escape").decode()
    if not path:
        raise UnsafePath(f"{what} names an empty file path")
    if len(path.encode()) > MAX_PATH:
        raise UnsafePath(f"{what} names a path longer than {MAX_PATH} bytes: {shown}...")
    if path.startswith("/"):
        raise UnsafePath(f"{what} names an absolute path: {shown}")
    if "\\" in path or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise UnsafePath(f"{what} names a path with a backslash or control character: {shown}")
    parts = path.removesuffix("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"{what} names a path with an empty, '.' or '..' component: {shown}")
        if len(part.encode()) > MAX_COMPONENT:
            raise UnsafePath(f"{what} names a path with a component over {MAX_COMPONENT} bytes: {shown}")
        if part.endswith(PARTIAL_SUFFIX):
            raise UnsafePath(f"{what} names a path pier uses for partial files: {shown}")
    return "/".join(parts)


def check_paths(paths: Iterable[str], what: str = "artifact") -> None:
    """No path twice, and no path both a file and another's directory."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise UnsafePath(f"{what} names {path[:200]!r} twice")
        seen.add(path)
    for path in seen:
        parts = path.split("/")
        for end in range(1, len(parts)):
            if "/".join(parts[:end]) in seen:
                raise UnsafePath(f"{what} names {'/'.join(parts[:end])!r} as a file and as a directory")


class Claims:
    """The paths one artifact writes, and the folders above them, across all its layers.

    Tar layers name their files only as they are read, in parallel: each layer claims its
    names at once (under a lock) after it verified and before any is renamed into place, so
    no two entries write one path and no file is also another's folder.
    """

    def __init__(self, files: Iterable[str] = ()) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()
        self._lock = threading.Lock()
        self.claim(files, "the artifact")

    def claim(self, paths: Iterable[str], what: str) -> None:
        with self._lock:
            for path in paths:
                if path in self._files:
                    raise UnsafePath(f"{what} writes {path[:200]!r}, which another entry writes too")
                if path in self._folders:
                    raise UnsafePath(f"{what} names {path[:200]!r} as a file and as a directory")
                parts = path.split("/")
                parents = ["/".join(parts[:end]) for end in range(1, len(parts))]
                for parent in parents:
                    if parent in self._files:
                        raise UnsafePath(f"{what} names {parent[:200]!r} as a file and as a directory")
                self._files.add(path)
                self._folders.update(parents)


def _open_directory(parent: int, name: str, create: bool) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, flags, dir_fd=parent)


@contextlib.contextmanager
def directory_of(root: Path, path: str) -> Iterator[tuple[int, str]]:
    """(an fd of ``path``'s parent inside ``root``, the last component), creating directories;
    ``UnsafePath`` when a component on the way is a symlink or not a directory."""
    parts = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts[:-1]):
            try:
                inner = _open_directory(fd, part, create=True)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                walked = "/".join(parts[: index + 1])
                raise UnsafePath(
                    f"{walked} in {root} is a symlink or a file, not a directory: not writing {path}"
                ) from None
            os.close(fd)
            fd = inner
        yield fd, parts[-1]
    finally:
        os.close(fd)


class Busy(UnsafePath):
    """Another pier process is writing the same file of the same blob right now."""


class PlacedFile:
    """A file written under a temporary name beside its final one, renamed into place when verified.

    The temporary name is fixed by the path and the blob (``.<hash>.pier-partial``), so a
    pull that was killed leaves a partial file the next pull of the same blob picks up
    (``offset``), and one that failed for good is overwritten, not left to pile up. A lock
    on it keeps two processes from writing the same one.
    """

    def __init__(self, root: Path, path: str, digest: str, mode: int = 0o644) -> None:
        self.root, self.path, self.mode = root, path, mode
        self.discard = False  # set when the bytes are known bad: removed, never resumed
        self._directory = directory_of(root, path)
        self.dir_fd, self.name = self._directory.__enter__()
        key = hashlib.sha256(f"{path}\0{digest}".encode()).hexdigest()[:24]
        self.partial = f".{key}{PARTIAL_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.partial, flags, 0o600, dir_fd=self.dir_fd)
        except OSError:
            self._directory.__exit__(None, None, None)
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self._directory.__exit__(None, None, None)
            raise Busy(f"another pier process is writing {path} in {root}") from None
        self.offset = os.fstat(self.fd).st_size  # what a killed pull left

    @property
    def proc_path(self) -> Path:
        """The partial file, by a path that cannot be redirected (for code that takes a path)."""
        return Path(f"/proc/self/fd/{self.fd}")

    def commit(self) -> os.stat_result:
        """fsync, set the mode, and rename over the final name (a symlink there is replaced, not
        followed); the stat of what is now under the final name, from the open file itself."""
        os.fsync(self.fd)
        os.fchmod(self.fd, self.mode)
        try:
            existing = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise UnsafePath(f"{self.path} in {self.root} is a directory: not replacing it with a file")
        os.rename(self.partial, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.partial = ""
        return os.fstat(self.fd)

    def close(self) -> None:
        """Release the descriptors; the partial file stays for a later pull unless it is bad or empty."""
        empty = self.fd >= 0 and os.fstat(self.fd).st_size == 0
        if self.partial and (self.discard or empty):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial, dir_fd=self.dir_fd)
        self.partial = ""
        if self.fd >= 0:
            os.close(self.fd)  # and the lock with it
            self.fd = -1
        self._directory.__exit__(None, None, None)

    def __enter__(self) -> PlacedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stat_inside(root: Path, path: str) -> os.stat_result | None:
    """lstat of ``path`` under ``root`` without following symlinks on the way; None if absent or unsafe."""
    try:
        with directory_of_existing(root, path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except (OSError, UnsafePath):
        return None


@contextlib.contextmanager
def directory_of_existing(root: Path, path: str) -> Iterator[tuple[int, str]]:
    parts = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = _open_directory(fd, part, create=False)
            os.close(fd)
            fd = inner
        yield fd, parts[-1]
    finally:
        os.close(fd)
