"""A copy of stacked layer directories: overlayfs's view, for where overlayfs cannot mount.

Layers are copied bottom first, each read as overlayfs reads it: a 0/0 character device
deletes what lies below under its name, an opaque directory drops what lies below it,
and any entry replaces a lower entry of another type. Regular files are reflinked where
the filesystem can (a copy that costs no space until written), copied otherwise; files
hardlinked within a layer stay hardlinked. Every destination path is reached through
directories this copy made itself, never through a symlink a layer put there, and files
are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path

from .layers import OPAQUE_XATTR, OVERLAY_XATTRS, is_whiteout

FICLONE = 0x40049409  # ioctl: share the source's extents (btrfs, xfs, bcachefs)


def _clear(path: str) -> None:
    """Delete whatever is at ``path``, directories included."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_xattrs(source: str, target: str) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(OVERLAY_XATTRS):
            continue
        with contextlib.suppress(OSError):
            os.setxattr(target, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=False)


def copy_file(source: str, target: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(source, "rb") as src:
        fd = os.open(target, flags, 0o600)
        try:
            try:
                fcntl.ioctl(fd, FICLONE, src.fileno())
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                    raise
                size = os.fstat(src.fileno()).st_size
                offset = 0
                while offset < size:
                    copied = os.copy_file_range(src.fileno(), fd, size - offset, offset, offset)
                    if copied == 0:
                        break
                    offset += copied
        finally:
            os.close(fd)


class _Copier:
    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.is_root = os.geteuid() == 0
        self.dir_times: list[tuple[str, os.stat_result]] = []

    def layer(self, layer: str) -> None:
        links: dict[int, str] = {}  # inode in the layer -> the first copy made of it
        for folder, dirs, files in os.walk(layer):
            relative = os.path.relpath(folder, layer)
            target_folder = self.dest if relative == "." else os.path.join(self.dest, relative)
            for name in dirs + files:
                source = os.path.join(folder, name)
                target = os.path.join(target_folder, name)
                info = os.lstat(source)
                if stat.S_ISDIR(info.st_mode):
                    self._directory(source, target, info)
                else:
                    self._other(source, target, info, links)
        for path, info in self.dir_times:
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        self.dir_times.clear()

    def _directory(self, source: str, target: str, info: os.stat_result) -> None:
        try:
            existing = os.lstat(target).st_mode
        except FileNotFoundError:
            existing = 0
        opaque = _xattr(source, OPAQUE_XATTR) == b"y"
        if existing and (not stat.S_ISDIR(existing) or opaque):
            _clear(target)
            existing = 0
        if not existing:
            os.mkdir(target, 0o700)
        self._metadata(source, target, info)
        self.dir_times.append((target, info))

    def _other(self, source: str, target: str, info: os.stat_result, links: dict[int, str]) -> None:
        _clear(target)
        if is_whiteout(info):
            return
        if info.st_nlink > 1 and stat.S_ISREG(info.st_mode) and info.st_ino in links:
            os.link(links[info.st_ino], target, follow_symlinks=False)
            return
        if stat.S_ISREG(info.st_mode):
            copy_file(source, target)
            links[info.st_ino] = target
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISFIFO(info.st_mode):
            os.mkfifo(target, 0o600)
        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            os.mknod(target, (info.st_mode & 0o170000) | 0o600, info.st_rdev)
        else:
            return  # a socket: nothing an image can carry
        self._metadata(source, target, info)
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)

    def _metadata(self, source: str, target: str, info: os.stat_result) -> None:
        if self.is_root:
            os.lchown(target, info.st_uid, info.st_gid)
        _copy_xattrs(source, target)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(target, stat.S_IMODE(info.st_mode))  # after chown, which clears setuid bits


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def materialize(layers: list[Path], dest: Path) -> None:
    """Copy ``layers`` (bottom first) into ``dest``, an existing empty directory."""
    copier = _Copier(str(dest))
    for layer in layers:
        copier.layer(str(layer))
