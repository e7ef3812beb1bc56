"""Apply image layers to a root filesystem, and never write anywhere else.

Every path is resolved in one place, ``_resolve_parent``: component by component, with
``lstat``, following symlinks the way the container will see them (an absolute target
starts again at the rootfs), and refusing any entry whose name or whose route through
earlier symlinks would leave the rootfs. The final component is never followed: it is
replaced. Whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) follow
image-spec ``layer.md``; ownership, device nodes and xattrs are kept only when the
caller may create them (root), as umoci does.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
COPY_BUFFER = 1 << 20


class UnsafeLayer(Exception):
    """A layer entry that would write outside the rootfs (or is otherwise refused)."""

    def __init__(self, layer: str, entry: str, reason: str) -> None:
        super().__init__(f"layer {layer}: entry {entry!r}: {reason}")


@contextmanager
def decompressed(stream: BinaryIO, media_type: str) -> Iterator[BinaryIO]:
    """The layer's tar stream, whatever its compression (OCI and Docker media types)."""
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(stream) as reader:
            yield reader
    elif media_type.endswith(("+gzip", ".gzip")) or media_type.endswith("tar.gzip"):
        from isal import igzip

        with igzip.open(stream, "rb") as reader:
            yield reader
    elif media_type.endswith(("tar", ".tar")):
        yield stream
    else:
        raise ValueError(f"unsupported layer media type: {media_type}")


def _clean_name(layer: str, name: str) -> PurePosixPath | None:
    """The entry's path relative to the rootfs; None for the rootfs itself."""
    if name.startswith("/"):
        raise UnsafeLayer(layer, name, "absolute path")
    if "\x00" in name:
        raise UnsafeLayer(layer, name, "NUL in path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(layer, name, "path contains '..'")
    return PurePosixPath(*parts) if parts else None


class _Root:
    def __init__(self, rootfs: Path, layer: str) -> None:
        self.root = rootfs
        self.layer = layer

    def resolve_parent(self, entry: str, relative: PurePosixPath) -> Path:
        """The real directory that will hold ``relative``'s last component, inside the rootfs."""
        return self._walk(entry, list(relative.parts[:-1])) / relative.name

    def resolve(self, entry: str, relative: PurePosixPath) -> Path:
        """Follow every component, the last one included (hardlink targets)."""
        return self._walk(entry, list(relative.parts))

    def _walk(self, entry: str, pending: list[str]) -> Path:
        current: list[str] = []  # components below the rootfs, all real directories so far
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise UnsafeLayer(self.layer, entry, "a symlink on its path points outside the rootfs")
                current.pop()
                continue
            candidate = self.root.joinpath(*current, part)
            try:
                info = candidate.lstat()
            except FileNotFoundError:
                current.append(part)  # created later (as a directory) by the caller
                continue
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(self.layer, entry, "too many levels of symlinks")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = []  # the container sees absolute targets from its own root
                pending = [p for p in target.split("/") if p] + pending
                continue
            current.append(part)
        return self.root.joinpath(*current)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _ensure_dirs(root: Path, path: Path) -> None:
    """Make missing parents; a non-directory in the way is replaced, as docker does."""
    relative = path.relative_to(root)
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        if not current.exists():
            current.mkdir(mode=0o755)


class LayerApplier:
    def __init__(self, rootfs: Path, layer: str) -> None:
        self.rootfs = rootfs
        self.root = _Root(rootfs, layer)
        self.layer = layer
        self.is_root = os.geteuid() == 0
        self.created: set[Path] = set()  # paths this layer wrote, spared by its opaque markers
        self.dir_times: list[tuple[Path, float]] = []

    def apply(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            self._entry(tar, member)
        for path, mtime in reversed(self.dir_times):  # children first changed their parents
            if path.is_dir() and not path.is_symlink():
                os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = _clean_name(self.layer, member.name)
        if relative is None:
            return  # "./" itself: the rootfs's own metadata is not taken from layers
        name = relative.name
        if name == OPAQUE_MARKER:
            directory = self.root.resolve_parent(member.name, relative)
            parent = directory.parent
            if parent.is_dir():
                for child in list(parent.iterdir()):
                    if child not in self.created:
                        _remove(child)
            return
        if name.startswith(WHITEOUT_PREFIX):
            hidden = relative.with_name(name[len(WHITEOUT_PREFIX) :])
            target = self.root.resolve_parent(member.name, hidden)
            if target.is_symlink() or target.exists():
                _remove(target)
            return
        path = self.root.resolve_parent(member.name, relative)
        _ensure_dirs(self.rootfs, path.parent)
        if member.isdir():
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()
            if not path.exists():
                path.mkdir(mode=0o700)
        else:
            if path.is_symlink() or path.exists():
                _remove(path)
            self._create(tar, member, path)
        self.created.add(path)
        self._metadata(member, path)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        if member.isreg():
            source = tar.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                assert source is not None
                shutil.copyfileobj(source, out, COPY_BUFFER)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            link = _clean_name(self.layer, member.linkname)
            if link is None:
                raise UnsafeLayer(self.layer, member.name, "hardlink to the rootfs itself")
            target = self.root.resolve(member.name, link)
            if not target.is_symlink() and not target.is_file():
                raise UnsafeLayer(
                    self.layer, member.name, f"hardlink target {member.linkname!r} is not a file"
                )
            os.link(target, path, follow_symlinks=False)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        elif member.ischr() or member.isblk():
            if not self.is_root:
                return  # as umoci rootless: device nodes need privileges
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise UnsafeLayer(self.layer, member.name, f"unsupported tar entry type {member.type!r}")

    def _metadata(self, member: tarfile.TarInfo, path: Path) -> None:
        if not path.exists() and not path.is_symlink():
            return  # a skipped device node
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        for key, value in (member.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                try:
                    os.setxattr(
                        path,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                        raise
        if member.issym():
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            return
        if not member.islnk():
            os.chmod(path, member.mode & 0o7777)
        if member.isdir():
            self.dir_times.append((path, member.mtime))
        elif not member.islnk():
            os.utime(path, (member.mtime, member.mtime))


def apply_layer(rootfs: Path, stream: BinaryIO, media_type: str, layer: str) -> None:
    """Apply one layer (a tar stream, compressed or not) on top of ``rootfs``."""
    rootfs = Path(rootfs)
    rootfs.mkdir(parents=True, exist_ok=True)
    with decompressed(stream, media_type) as tar_stream, tarfile.open(fileobj=tar_stream, mode="r|") as tar:
        LayerApplier(rootfs.resolve(), layer).apply(tar)
