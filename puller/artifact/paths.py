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
import os
import stat
import uuid
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


class PlacedFile:
    """A file written under a temporary name beside its final one, renamed into place when verified."""

    def __init__(self, root: Path, path: str, mode: int = 0o644) -> None:
        self.root, self.path, self.mode = root, path, mode
        self._directory = directory_of(root, path)
        self.dir_fd, self.name = self._directory.__enter__()
        self.partial = f".{self.name[:200]}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.partial, flags, 0o600, dir_fd=self.dir_fd)

    @property
    def proc_path(self) -> Path:
        """The partial file, by a path that cannot be redirected (for code that takes a path)."""
        return Path(f"/proc/self/fd/{self.fd}")

    def commit(self, mtime: float | None = None) -> None:
        """fsync, set the mode, and rename over the final name (a symlink there is replaced, not followed)."""
        os.fsync(self.fd)
        os.fchmod(self.fd, self.mode)
        if mtime is not None:
            os.utime(self.fd, (mtime, mtime))
        try:
            existing = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise UnsafePath(f"{self.path} in {self.root} is a directory: not replacing it with a file")
        os.rename(self.partial, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.partial = ""

    def close(self) -> None:
        """Drop the partial file unless committed, and release the descriptors."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.partial:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial, dir_fd=self.dir_fd)
            self.partial = ""
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
