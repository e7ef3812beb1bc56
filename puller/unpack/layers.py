"""Apply image layers to a root filesystem, and never write anywhere else.

Every path is resolved in one place, ``_Root.walk``: component by component, with
``lstat``, following symlinks the way the container will see them (an absolute target
starts again at the rootfs), and refusing any entry whose name or whose route through
earlier symlinks would leave the rootfs. The final component is never followed: it is
replaced. Whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) follow
image-spec ``layer.md``; ownership, device nodes and xattrs are kept only when the
caller may create them (root), as umoci does.

Two modes share that walk. *Merged* applies a layer on top of a tree that already holds
the layers below (``pier unpack``). *Overlay* unpacks one layer into an empty directory of
its own (the layer store) and keeps whiteouts in overlayfs's format (a 0/0 character
device, ``trusted.overlay.opaque`` on an opaque directory), so that overlayfs stacks the
layer directories into the image's filesystem. A layer directory depends on nothing but
the layer, as in docker's overlay2 driver: a directory the tar only implies is made 0755
and owned by root, and a hardlink must name a file of the same layer.

Every layer is charged to an ``UnpackBudget`` (``unpack_limits``): decompressed bytes as
they are read, entries as they come, and disk space before each write. Sparse members
are written as sparse files: only their data regions take space.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from oci.verify import Verifier, VerifyError

from ..errors import PierError
from .limits import UnpackBudget, UnpackLimits

MIN_MTIME, MAX_MTIME = -(2**31), 253_402_300_799  # 1901 .. 9999-12-31T23:59:59Z
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Overlayfs reads trusted.* as root; unprivileged mounts (``userxattr``) read user.* instead.
OVERLAY_XATTR_PREFIX = "trusted.overlay." if os.geteuid() == 0 else "user.overlay."
OPAQUE_XATTR = OVERLAY_XATTR_PREFIX + "opaque"
OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")  # never taken from a layer: they steer the mount
MAX_SYMLINK_HOPS = 40
COPY_BUFFER = 1 << 20
INFLATE_BLOCK = 1 << 20  # what the inflating thread hands over at a time


class UnsafeLayer(PierError):
    """A layer entry that would write outside the rootfs (or is otherwise refused)."""

    def __init__(self, layer: str, entry: str, reason: str) -> None:
        super().__init__(f"layer {layer}: entry {entry!r}: {reason}")


class BrokenLayer(PierError):
    """A layer that cannot be read or written to the end (corrupt data, a failing disk)."""

    def __init__(self, layer: str, problem: object) -> None:
        super().__init__(f"layer {layer}: cannot unpack: {problem}")


@contextmanager
def decompressed(stream: BinaryIO, media_type: str) -> Iterator[BinaryIO]:
    """The layer's tar stream, whatever its compression (OCI and Docker media types)."""
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(stream) as reader:
            yield reader
    elif media_type.endswith(("+gzip", ".gzip")) or media_type.endswith("tar.gzip"):
        from isal import igzip_threaded

        # A thread of its own inflates ahead (isal, outside the GIL) while this one writes files:
        # 1 MiB at a time, two blocks queued at most, so no gzip bomb fills memory.
        with igzip_threaded.open(stream, "rb", threads=1, block_size=INFLATE_BLOCK) as reader:
            yield reader
    elif media_type.endswith(("tar", ".tar")):
        yield stream
    else:
        raise ValueError(f"unsupported layer media type: {media_type}")


def _clean_name(layer: str, name: str) -> tuple[str, ...] | None:
    """The entry's path relative to the rootfs; None for the rootfs itself."""
    if name.startswith("/"):
        raise UnsafeLayer(layer, name, "absolute path")
    if "\x00" in name:
        raise UnsafeLayer(layer, name, "NUL in path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(layer, name, "path contains '..'")
    return tuple(parts) if parts else None


class _Root:
    """Resolves paths as the container will see them, and refuses any route that leaves the rootfs."""

    def __init__(self, rootfs: str, layer: str) -> None:
        self.root = rootfs
        self.layer = layer

    def walk(self, entry: str, parts: tuple[str, ...] | list[str]) -> str:
        """The real path of ``parts``, every symlink on the way followed inside the rootfs."""
        pending = deque(parts)  # a deque: each hop prepends up to PATH_MAX worth of components
        current: list[str] = []  # components below the rootfs, all real directories so far
        hops = 0
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise UnsafeLayer(self.layer, entry, "a symlink on its path points outside the rootfs")
                current.pop()
                continue
            candidate = os.path.join(self.root, *current, part)
            try:
                info = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):  # missing, or below a non-directory
                current.append(part)  # created later (as a directory) by the caller
                continue
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(self.layer, entry, "too many levels of symlinks")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = []  # the container sees absolute targets from its own root
                pending.extendleft(reversed([p for p in target.split("/") if p]))
                continue
            current.append(part)
        return os.path.join(self.root, *current)


def resolve_inside(rootfs: Path, relative: str) -> Path:
    """``relative`` as a container on ``rootfs`` sees it: symlinks followed, never out of the rootfs."""
    parts = _clean_name("image", relative.lstrip("/")) or ()
    return Path(_Root(str(rootfs), "image").walk(relative, parts))


def _remove(path: str) -> bool:
    """Delete whatever is at ``path``; True when it was a directory or a symlink (routes change)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
        return True
    os.unlink(path)
    return stat.S_ISLNK(mode)


def _route(root: str, path: str) -> Iterator[tuple[str, int | None]]:
    """Each component from ``root`` down to ``path``: (its path, its ``lstat`` mode, or None if missing).

    Lazily: a caller may create a missing component before the next one is looked at.
    """
    current = root
    for part in os.path.relpath(path, root).split("/"):
        if part == ".":
            continue
        current = os.path.join(current, part)
        try:
            yield current, os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            yield current, None


def _is_real_dir(root: str, path: str) -> bool:
    """Whether ``path`` is a directory reached from ``root`` through real directories only.

    For paths remembered earlier in the layer: a later entry may have turned one of their
    parents into a symlink (maybe out of the rootfs), which a plain ``lstat`` would follow.
    A missing one was removed by a later entry of this layer.
    """
    return all(mode is not None and stat.S_ISDIR(mode) for _, mode in _route(root, path))


def is_whiteout(info: os.stat_result) -> bool:
    """Overlayfs's whiteout: a character device 0/0."""
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _file_on_route(root: str, path: str) -> bool:
    """Whether something that is not a directory stands on the way from ``root`` to ``path``."""
    for _, mode in _route(root, path):
        if mode is None:
            return False
        if not stat.S_ISDIR(mode):
            return True
    return False


def _ensure_dirs(root: str, path: str) -> None:
    """Make missing parents; a non-directory in the way is replaced, as docker does."""
    for current, mode in _route(root, path):
        if mode is not None and not stat.S_ISDIR(mode):
            os.unlink(current)
        if mode is None or not stat.S_ISDIR(mode):
            os.mkdir(current, 0o755)


class LayerApplier:
    def __init__(self, rootfs: Path, layer: str, budget: UnpackBudget, overlay: bool = False) -> None:
        self.overlay = overlay
        self.rootfs = str(rootfs)
        self.budget = budget
        self.root = _Root(self.rootfs, layer)
        self.layer = layer
        self.is_root = os.geteuid() == 0
        self.created: set[str] = set()  # paths this layer wrote, spared by its opaque markers
        self.dir_times: list[tuple[str, float]] = []
        self.file_bytes = 0  # data of the regular files written (holes of sparse ones not counted)
        # Parent path (as named in the tar) -> its real directory, known to exist. Most entries
        # sit in a directory an earlier entry already resolved; anything that could change a
        # route (a removal, a symlink, a directory replaced) empties it.
        self.parents: dict[tuple[str, ...], str] = {}

    def apply(self, tar: tarfile.TarFile) -> None:
        while True:
            member = tar.next()  # PAX records, long names, sparse maps: held in memory, bounded
            self.budget.end_header()
            if member is None:
                break
            # tarfile keeps every member read: a million of them is memory. ``members`` is an
            # attribute of every TarFile since Python 2, absent from typeshed.
            tar.members.clear()  # type: ignore[attr-defined]
            self.budget.add_entry()
            self._entry(tar, member)
            assert tar.fileobj is not None
            tar.fileobj.seek(tar.offset)  # data this entry left unread (a whiteout's) is no header
            self.budget.start_header()
        for path, mtime in reversed(self.dir_times):  # children first changed their parents
            if _is_real_dir(self.rootfs, path):
                os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _parent(self, entry: str, parts: tuple[str, ...]) -> str:
        """The real directory that will hold the entry, created if missing."""
        key = parts[:-1]
        parent = self.parents.get(key)
        if parent is None:
            parent = self.root.walk(entry, key)
            _ensure_dirs(self.rootfs, parent)
            self.parents[key] = parent
        return parent

    def _routes_changed(self) -> None:
        self.parents.clear()

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        # A damaged or hostile header can hold any number (base-256): utime takes what time_t does.
        member.mtime = min(max(member.mtime, MIN_MTIME), MAX_MTIME)
        parts = _clean_name(self.layer, member.name)
        if parts is None:
            return  # "./" itself: the rootfs's own metadata is not taken from layers
        name = parts[-1]
        if self.overlay and name.startswith(WHITEOUT_PREFIX):
            self._overlay_whiteout(member.name, parts)
            return
        if name == OPAQUE_MARKER:
            directory = self.root.walk(member.name, parts[:-1])
            if os.path.isdir(directory) and not os.path.islink(directory):
                for child in os.listdir(directory):
                    path = os.path.join(directory, child)
                    if path not in self.created:
                        _remove(path)
            self._routes_changed()
            return
        if name.startswith(WHITEOUT_PREFIX):
            hidden = name[len(WHITEOUT_PREFIX) :]
            if hidden in ("", ".", ".."):
                raise UnsafeLayer(self.layer, member.name, "whiteout of no name, '.' or '..'")
            target = os.path.join(self.root.walk(member.name, parts[:-1]), hidden)
            _remove(target)
            self._routes_changed()
            return
        path = os.path.join(self._parent(member.name, parts), name)
        if not member.isreg():
            self.budget.space.take(0)  # an inode, a directory block
        if member.isdir():
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat.S_ISDIR(mode):
                os.unlink(path)
                self._routes_changed()
                mode = None
            if mode is None:
                os.mkdir(path, 0o700)
            self._metadata(member, path)
        elif member.isreg():
            self._regular(tar, member, path)
        else:
            if _remove(path):
                self._routes_changed()
            self._create(member, path)
            if member.issym() or member.islnk():  # a hardlink to a symlink is a new symlink
                self._routes_changed()
            self._metadata(member, path)
        self.created.add(path)

    def _overlay_whiteout(self, entry: str, parts: tuple[str, ...]) -> None:
        """Record a whiteout or an opaque marker the way overlayfs reads it.

        Whiteouts hide only what lower layers hold (image-spec): an entry this layer made
        under the same name stays, whatever the order in the tar.
        """
        name = parts[-1]
        hidden = name[len(WHITEOUT_PREFIX) :]
        if name != OPAQUE_MARKER and hidden in ("", ".", ".."):
            raise UnsafeLayer(self.layer, entry, "whiteout of no name, '.' or '..'")
        if _file_on_route(self.rootfs, self.root.walk(entry, parts[:-1])):
            return  # this layer's own file already hides everything below its name
        directory = self._parent(entry, parts)
        if name == OPAQUE_MARKER:
            os.setxattr(directory, OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        path = os.path.join(directory, hidden)
        if path in self.created:
            return
        if _remove(path):
            self._routes_changed()
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, 0)
        except PermissionError as exc:
            raise BrokenLayer(
                self.layer, f"cannot record the whiteout of {hidden!r}: {exc.strerror}"
            ) from exc
        self.budget.space.take(0)

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        """Write a file and set its metadata through the open descriptor: no path is looked up twice."""
        sparse = _sparse_map(self.layer, member)
        data = member.size if sparse is None else sum(size for _, size in sparse)
        self.budget.space.take(data)
        self.file_bytes += data
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            if _remove(path):
                self._routes_changed()
            fd = os.open(path, flags, 0o600)
        try:
            if sparse is None:
                _copy_data(tar, member, fd)
            else:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    _write_sparse(tar, member, sparse, out)
            if self.is_root:
                os.fchown(fd, member.uid, member.gid)
            self._xattrs(member, fd)
            os.fchmod(fd, member.mode & 0o7777)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _create(self, member: tarfile.TarInfo, path: str) -> None:
        if member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            link = _clean_name(self.layer, member.linkname)
            if link is None:
                raise UnsafeLayer(self.layer, member.name, "hardlink to the rootfs itself")
            # The target's own last component is not followed: a hardlink to a symlink links the
            # symlink, as tar does (and os.link below is told not to follow it either).
            target = os.path.join(self.root.walk(member.name, link[:-1]), link[-1])
            try:
                mode = os.lstat(target).st_mode
            except (FileNotFoundError, NotADirectoryError):
                mode = 0
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
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

    def _xattrs(self, member: tarfile.TarInfo, target: str | int) -> None:
        """The entry's ``SCHILY.xattr.*``, set on an open descriptor or on a path not followed."""
        follow = isinstance(target, int)  # an fd refuses follow_symlinks=False; it is no symlink
        for key, value in (member.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr.") and not key[13:].startswith(OVERLAY_XATTRS):
                try:
                    os.setxattr(
                        target,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=follow,
                    )
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                        raise

    def _metadata(self, member: tarfile.TarInfo, path: str) -> None:
        """Owner, xattrs, mode and mtime of a non-regular entry; never through a symlink."""
        if not os.path.lexists(path):
            return  # a skipped device node
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        self._xattrs(member, path)
        if member.issym():
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            return
        if member.islnk():
            return  # the target's own entry set its metadata
        os.chmod(
            path, member.mode & 0o7777
        )  # a directory, FIFO or device this layer just made: not a symlink
        if member.isdir():
            self.dir_times.append((path, member.mtime))
        else:
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_data(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    """A member's bytes into ``fd``, read from the layer's stream in large pieces.

    tarfile's stream reader hands data over in 10 KiB reads, each joined and sliced in
    Python; a 100 MB file is ten thousand of them. Its stream (``_Stream``: ``buf``, the
    bytes read ahead; ``pos``, where ``buf`` ends; ``fileobj``, the source) is read
    directly here when it is exactly at the member's data, and through
    ``extractfile`` otherwise.
    """
    stream: Any = tar.fileobj  # tarfile._Stream in "r|" mode: private, so checked before use
    fast = (
        getattr(stream, "pos", None) == member.offset_data
        and isinstance(getattr(stream, "buf", None), bytes)
        and getattr(stream, "comptype", None) == "tar"  # no compression of tarfile's own: ours is below
    )
    if not fast:
        source = tar.extractfile(member)
        assert source is not None
        while data := source.read(COPY_BUFFER):
            _write_all(fd, data)
        return
    remaining = member.size
    ahead: bytes = stream.buf
    if ahead:
        _write_all(fd, ahead[:remaining])
        stream.buf = ahead[remaining:]
        remaining -= min(len(ahead), remaining)
    while remaining:
        data = stream.fileobj.read(min(COPY_BUFFER, remaining))
        if not data:
            raise tarfile.ReadError("unexpected end of data")
        if len(data) > remaining:  # a source may return more than asked: the rest is the next header's
            stream.buf = data[remaining:]
            data = data[:remaining]
        _write_all(fd, data)
        remaining -= len(data)
    stream.pos += member.size


def _sparse_map(layer: str, member: tarfile.TarInfo) -> list[tuple[int, int]] | None:
    """The data regions of a sparse member, checked to be in order and inside the file; None if not sparse."""
    if member.sparse is None:
        return None
    end = 0
    regions = []
    # typeshed says bytes; tarfile really keeps [(offset, size), ...] read from the headers.
    for offset, size in cast(list[tuple[int, int]], member.sparse):
        if size == 0:
            continue  # GNU tar fills unused slots of its header with (0, 0) and ends with (size, 0)
        if offset < end or size < 0 or offset + size > member.size:
            raise UnsafeLayer(layer, member.name, "sparse map out of order or beyond the file's size")
        regions.append((offset, size))
        end = offset + size
    return regions


def _write_sparse(
    tar: tarfile.TarFile, member: tarfile.TarInfo, regions: list[tuple[int, int]], out: BinaryIO
) -> None:
    """Only the data regions, each at its offset; the holes between stay holes (as GNU tar writes them)."""
    source = tar.fileobj
    assert source is not None
    source.seek(member.offset_data)  # the regions' data follow each other in the archive
    for offset, size in regions:
        out.seek(offset)
        while size > 0:
            data = source.read(min(size, COPY_BUFFER))
            if not data:
                raise tarfile.ReadError("unexpected end of data")
            out.write(data)
            size -= len(data)
    out.truncate(member.size)


def is_layer_fault(exc: Exception) -> bool:
    """Whether ``exc`` is the layer's (or the disk's) fault rather than a bug: reported as one line."""
    faults = (OSError, EOFError, ValueError, IndexError, tarfile.TarError, zlib.error)
    return isinstance(exc, faults) or type(exc).__name__ in ("IsalError", "ZstdError")


class LayerDigestMismatch(BrokenLayer):
    """A layer whose bytes are not the ones its manifest or config names."""


class _Hashed:
    """A read-only stream that feeds every byte it yields to a verifier."""

    def __init__(self, stream: BinaryIO, verifier: Verifier) -> None:
        self._stream = stream
        self.verifier = verifier

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.verifier.update(data)
        return data

    def drain(self) -> None:
        """Read to the end: a digest covers the bytes after the tar's end-of-archive too."""
        while self.read(COPY_BUFFER):
            pass


def apply_layer(
    rootfs: Path,
    stream: BinaryIO,
    media_type: str,
    layer: str,
    budget: UnpackBudget | None = None,
    *,
    overlay: bool = False,
    diff_id: str | None = None,
) -> int:
    """Apply one layer (a tar stream, compressed or not) on top of ``rootfs``, within ``budget``.

    Returns the bytes of regular files written (the data a layer directory holds).

    Without a budget, the layer gets one of its own under the limits from the environment.
    ``overlay`` writes whiteouts in overlayfs's format (``rootfs`` is then the layer's own
    empty directory); ``diff_id`` is checked against the uncompressed bytes, to the last.
    """
    rootfs = Path(rootfs)
    rootfs.mkdir(parents=True, exist_ok=True)
    if budget is None:
        budget = UnpackBudget(UnpackLimits.from_env(), rootfs)
    budget.start_layer(layer)
    try:
        with decompressed(stream, media_type) as raw:
            counted = budget.counted(raw)
            hashed = _Hashed(counted, Verifier(diff_id)) if diff_id else None
            source = cast(BinaryIO, hashed) if hashed is not None else counted  # read() is all tarfile uses
            # tarfile's own small buffer: its stream copies what is left of it on every read.
            with tarfile.open(fileobj=source, mode="r|") as tar:  # reads the first header
                applier = LayerApplier(rootfs.resolve(), layer, budget, overlay)
                applier.apply(tar)
            if hashed is not None:
                hashed.drain()
                try:
                    hashed.verifier.check()
                except VerifyError as exc:
                    raise LayerDigestMismatch(
                        layer, f"its uncompressed bytes are {exc.actual}, not the diff ID {diff_id}"
                    ) from None
            return applier.file_bytes
    except PierError:
        raise
    except Exception as exc:
        if not is_layer_fault(exc):
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BrokenLayer(layer, f"no space left on the device of {budget.space.target}") from exc
        raise BrokenLayer(layer, exc) from exc
