"""A build step's changes as an OCI layer: the same tree always gives the same bytes.

A step leaves a directory in the layer store's own format (overlayfs's: a 0/0 character
device is a whiteout, ``overlay.opaque=y`` marks an opaque directory): the upper directory
of a ``RUN``'s overlay mount, a ``COPY``'s fresh directory, or ``diff_trees``' output where
overlayfs cannot mount. ``write_layer`` streams it as a tar the way buildkit writes one:
names relative with no ``./`` (directories end in ``/``), depth first with each directory's
entries sorted bytewise by their names on disk, PAX headers with numeric ids only (no user
names, no atime or ctime), mtimes in whole seconds and clamped to ``epoch`` (buildkit's
rewrite-timestamp). Whiteouts and opaque markers are empty regular files of mode 0, owner
0:0 and mtime 0, as containerd 2 writes them, so they never vary. No ``overlay.*`` xattr
reaches the tar, nor ``security.selinux`` (the host's label, not the image's). Compression
is deterministic too: no name and mtime 0 in the gzip header, and the compressor is always
fed the same fixed-size pieces (isal's output depends on how its input is cut). ``adopt``
then moves the directory into the layer store, so that no later step unpacks the tar.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from oci.mediatypes import OCI_LAYER

from ..errors import PierError
from ..unpack.layer_store import LayerInfo, LayerStore, force_rmtree
from ..unpack.layers import OPAQUE_MARKER, OPAQUE_XATTR, OVERLAY_XATTRS, WHITEOUT_PREFIX, is_whiteout
from ..unpack.snapshot import copy_file

CHUNK = 1 << 20  # what the compressor is fed at a time: always this, or isal's output would vary
PORTABLE_GZIP_LEVEL = 6  # zlib's default, as Go's and docker's
GZIP_LEVEL = 1  # isal's levels are 0-3: 1 is about as fast as 0 and compresses ~10% better
ZSTD_LEVEL = 3
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
SUFFIXES = {"gzip": "gzip", "zstd": "zstd", "none": ""}
REFUSED = ("redirect", "metacopy")  # overlayfs features whose upper directory is no changeset
DROPPED_XATTRS = ("security.selinux",)
Links = dict[tuple[int, int], str]  # (st_dev, st_ino) -> the path of its first copy or entry
TAR_TYPES = {
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
}  # and regular files; sockets are left out, as buildkit does


class UnsupportedDiff(PierError):
    """A directory that cannot be written as a layer without changing what it means."""


@dataclass(frozen=True)
class WrittenLayer:
    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the compressed blob
    size: int  # compressed size
    media_type: str
    empty: bool  # the directory held nothing


def media_type_for(compression: str, docker: bool = False) -> str:
    suffix = SUFFIXES[compression]
    if not suffix:
        return DOCKER_LAYER if docker else OCI_LAYER
    return f"{DOCKER_LAYER}.{suffix}" if docker else f"{OCI_LAYER}+{suffix}"


class _TarSink:
    """What tarfile writes to: hashed (the diff ID), cut into CHUNKs, compressed, hashed again."""

    def __init__(self, out: BinaryIO, compression: str, portable: bool = False) -> None:
        self.out, self.compressor = out, _compressor(compression, portable)
        self.raw, self.blob = hashlib.sha256(), hashlib.sha256()
        self.offset = self.size = 0
        self.pending = bytearray()

    def tell(self) -> int:
        return self.offset

    def write(self, data: bytes) -> int:
        self.raw.update(data)
        self.offset += len(data)
        self.pending += data
        if len(self.pending) >= CHUNK:
            whole = len(self.pending) - len(self.pending) % CHUNK
            for start in range(0, whole, CHUNK):
                self._emit(bytes(self.pending[start : start + CHUNK]))
            del self.pending[:whole]
        return len(data)

    def finish(self) -> None:
        self._emit(bytes(self.pending), last=True)

    def _emit(self, data: bytes, last: bool = False) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data) + (self.compressor.flush() if last else b"")
        self.out.write(data)
        self.blob.update(data)
        self.size += len(data)


def _compressor(compression: str, portable: bool = False) -> Any:
    """An object of ``compress`` and ``flush`` (isal's, zlib's, zstandard's); None for "none".

    ``portable``: ISA-L chooses its code by CPU features, so its bytes may differ from one
    machine to another; a reproducible build gzips with zlib, the same bytes wherever the
    zlib is the same (2.5 times slower).
    """
    if compression == "gzip" and portable:
        return zlib.compressobj(PORTABLE_GZIP_LEVEL, zlib.DEFLATED, 31)
    if compression == "gzip":
        from isal import isal_zlib

        return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # gzip wrapper, mtime 0, no name
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    if compression == "none":
        return None
    raise ValueError(f"unsupported layer compression: {compression!r}")


def _entries(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to ``root``, lstat) of all below it: depth first, names sorted bytewise."""
    stack, prefixes = [iter(sorted(os.listdir(root), key=os.fsencode))], [""]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        relative = prefixes[-1] + name
        info = os.lstat(os.path.join(root, relative))
        yield relative, info
        if stat.S_ISDIR(info.st_mode):
            stack.append(iter(sorted(os.listdir(os.path.join(root, relative)), key=os.fsencode)))
            prefixes.append(relative + "/")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in names}


def _overlay_state(path: str, relative: str) -> tuple[dict[str, bytes], bool]:
    """(the entry's own xattrs, whether overlayfs marks it opaque). Refuses what a tar cannot say:
    a directory renamed (``redirect``), a copy-up of metadata only (``metacopy``)."""
    own, opaque = {}, False
    for name, value in _xattrs(path).items():
        if name.startswith(OVERLAY_XATTRS):
            feature = name.split(".", 2)[2]
            if feature in REFUSED:
                raise UnsupportedDiff(
                    f"{relative}: overlayfs {name} (mount with redirect_dir=off,metacopy=off)"
                )
            opaque = opaque or (feature == "opaque" and value == b"y")
        elif name not in DROPPED_XATTRS:
            own[name] = value
    return own, opaque


def _mtime(info: os.stat_result, epoch: int | None) -> int:
    seconds = info.st_mtime_ns // 1_000_000_000
    return seconds if epoch is None or seconds <= epoch else epoch


def _member(name: str, mode: int = 0) -> tarfile.TarInfo:
    """An empty file owned by 0:0 of mtime 0 and no user names: as is, a whiteout or an opaque marker."""
    member = tarfile.TarInfo(name)
    member.mode = mode
    return member


def write_layer(
    diff: Path,
    blob_out: BinaryIO,
    *,
    epoch: int | None,
    compression: str = "gzip",
    docker: bool = False,
    portable: bool = False,
) -> WrittenLayer:
    """Write ``diff`` (a directory in overlay format) to ``blob_out`` as a compressed layer tar.

    ``portable``: the same compressed bytes on any machine (see ``_compressor``).
    """
    media_type = media_type_for(compression, docker)
    sink = _TarSink(blob_out, compression, portable)
    tar = tarfile.TarFile(
        fileobj=sink,  # type: ignore[arg-type]  # write() and tell() are all a "w" TarFile uses
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
        copybufsize=CHUNK,
    )
    root, links, count = str(diff), Links(), 0
    for relative, info in _entries(root):
        path, kind, key = os.path.join(root, relative), stat.S_IFMT(info.st_mode), (info.st_dev, info.st_ino)
        head, _, name = relative.rpartition("/")
        count += 1
        if is_whiteout(info):  # never a hardlink: overlayfs links its whiteouts to one inode
            tar.addfile(_member(os.path.join(head, WHITEOUT_PREFIX + name)))
            continue
        if name.startswith(WHITEOUT_PREFIX):
            raise UnsupportedDiff(f"{relative}: an entry of this name would be read as a whiteout")
        if kind != stat.S_IFREG and kind not in TAR_TYPES:
            count -= 1  # a socket: nothing a layer carries
            continue
        xattrs, opaque = _overlay_state(path, relative)
        member = _member(relative, stat.S_IMODE(info.st_mode))
        member.uid, member.gid, member.mtime = info.st_uid, info.st_gid, _mtime(info, epoch)
        member.pax_headers = {
            f"SCHILY.xattr.{k}": xattrs[k].decode("utf-8", "surrogateescape") for k in sorted(xattrs)
        }
        if kind == stat.S_IFREG and info.st_nlink > 1 and key in links:
            member.type, member.linkname = tarfile.LNKTYPE, links[key]
        elif kind == stat.S_IFREG:
            if info.st_nlink > 1:
                links[key] = relative  # the first name of a hardlinked file carries its data
            member.size = info.st_size
            with os.fdopen(
                os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb", buffering=0
            ) as data:
                tar.addfile(member, data)
            continue
        else:
            member.type = TAR_TYPES[kind]
            member.linkname = os.readlink(path) if kind == stat.S_IFLNK else ""
            member.devmajor, member.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
        tar.addfile(member)
        if kind == stat.S_IFDIR and opaque:
            tar.addfile(_member(f"{relative}/{OPAQUE_MARKER}"))
            count += 1
    # The end as Go's tar writes it: two zero blocks, without tarfile.close()'s padding to 10 KiB
    # records (an empty layer is then the well-known 1024 zero bytes). The TarFile holds nothing open.
    sink.write(tarfile.NUL * 2 * tarfile.BLOCKSIZE)
    sink.finish()
    raw, blob = f"sha256:{sink.raw.hexdigest()}", f"sha256:{sink.blob.hexdigest()}"
    return WrittenLayer(raw, blob, sink.size, media_type, count == 0)


def _put(source: str, target: str, info: os.stat_result, links: Links, skip: tuple[str, ...]) -> bool:
    """A copy of one entry (a directory without its content, nor its mtime yet); False for a socket.

    A regular file is reflinked where the filesystem can, copied otherwise, or hardlinked to an
    earlier copy of its inode. Xattrs named with a prefix in ``skip`` are left out.
    """
    kind, key = stat.S_IFMT(info.st_mode), (info.st_dev, info.st_ino)
    if kind == stat.S_IFREG and info.st_nlink > 1 and key in links:
        os.link(links[key], target)
        return True
    if kind == stat.S_IFDIR:
        os.mkdir(target, 0o700)
    elif kind == stat.S_IFREG:
        copy_file(source, target)
        links[key] = target
    elif kind == stat.S_IFLNK:
        os.symlink(os.readlink(source), target)
    elif kind == stat.S_IFIFO:
        os.mkfifo(target, 0o600)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):  # whiteouts included
        os.mknod(target, kind | 0o600, info.st_rdev)
    else:
        return False
    if os.geteuid() == 0:
        os.lchown(target, info.st_uid, info.st_gid)
    for name, value in _xattrs(source).items():
        try:
            if not name.startswith(skip):
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:  # without root, security.* and trusted.* cannot be set
            if os.geteuid() == 0 or exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP):
                raise
    if kind != stat.S_IFLNK:
        os.chmod(target, stat.S_IMODE(info.st_mode))  # after chown, which clears setuid bits
    if kind != stat.S_IFDIR:
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    return True


def _copy_below(source: str, target: str, links: Links, skip: tuple[str, ...], dirs: list[Any]) -> None:
    """All below ``source`` into the directory ``target``; the directories made go to ``dirs``."""
    for relative, info in _entries(source):
        path = os.path.join(target, relative)
        if _put(os.path.join(source, relative), path, info, links, skip) and stat.S_ISDIR(info.st_mode):
            dirs.append((path, info))


def _dir_times(dirs: list[tuple[str, os.stat_result]]) -> None:
    for path, info in reversed(dirs):  # children first: making them changed their parents' mtimes
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _settle(root: str, epoch: int | None) -> tuple[int, int]:
    """A written directory made what unpacking its tar gives; (bytes of its files, tar entries).

    Overlayfs's bookkeeping xattrs go (``origin``, ``impure``, ``nlink``...), the opaque mark
    stays (as this process's overlayfs reads it), mtimes become the tar's (whole seconds,
    clamped to ``epoch``), and the top directory is 0755, as ``apply_layer`` makes it.
    """
    size, entries, seen = 0, 0, set[tuple[int, int]]()
    os.chmod(root, 0o755)
    for relative, info in [("", os.lstat(root)), *_entries(root)]:
        path = os.path.join(root, relative)
        _, opaque = _overlay_state(path, relative or ".")
        for name in _xattrs(path):
            if name.startswith(OVERLAY_XATTRS):
                os.removexattr(path, name, follow_symlinks=False)
        if opaque and stat.S_ISDIR(info.st_mode):
            os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)
            entries += 1
        if relative:
            entries += 1
            os.utime(path, ns=(info.st_atime_ns, _mtime(info, epoch) * 1_000_000_000), follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            size += info.st_size
    return size, entries


def adopt(diff: Path, layers_root_home: Path, diff_id: str, blob_digest: str, epoch: int | None) -> Path:
    """Move ``diff``, written as layer ``diff_id`` (blob ``blob_digest``), into the layer store of
    ``layers_root_home``, or delete it when the layer is there already; the layer's directory."""
    store = LayerStore(layers_root_home)
    with store.locked(diff_id):
        final = store.directory(diff_id)
        if store.has(diff_id):
            force_rmtree(Path(diff))
            return store.path(diff_id)
        for dead in store.root.glob(f".unpacking-{final.name}-*"):  # its writer held this lock: killed
            force_rmtree(dead)
        size, entries = _settle(str(diff), epoch)
        temporary = store.root / f".unpacking-{final.name}-{uuid.uuid4().hex}"
        try:
            temporary.mkdir()
            try:
                os.rename(diff, temporary / "diff")
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                dirs: list[tuple[str, os.stat_result]] = []
                os.mkdir(temporary / "diff", 0o755)
                _copy_below(str(diff), str(temporary / "diff"), Links(), (), dirs)
                _dir_times(dirs)
                force_rmtree(Path(diff))
            info = LayerInfo(diff_id, size, entries, blob_digest, time.time())
            (temporary / "layer.json").write_text(json.dumps(info.__dict__))
            os.rename(temporary, final)
        except BaseException:
            force_rmtree(temporary)
            raise
    return store.path(diff_id)


def _same_bytes(first: str, second: str) -> bool:
    with open(first, "rb", buffering=0) as one, open(second, "rb", buffering=0) as other:
        while (data := one.read(CHUNK)) == other.read(CHUNK):
            if not data:
                return True
    return False


def _meta(info: os.stat_result) -> tuple[int, ...]:
    return info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns


def _differs(new: str, old: str, now: os.stat_result, was: os.stat_result) -> bool:
    """Whether an entry kept its type but changed: metadata first, then a regular file's bytes."""
    if _meta(now) != _meta(was) or _xattrs(new) != _xattrs(old):
        return True
    kind = stat.S_IFMT(now.st_mode)
    if kind == stat.S_IFLNK:
        return os.readlink(new) != os.readlink(old)
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return now.st_rdev != was.st_rdev
    untouched = (now.st_dev, now.st_ino, now.st_ctime_ns) == (was.st_dev, was.st_ino, was.st_ctime_ns)
    if kind != stat.S_IFREG or untouched:
        return False  # a directory or a FIFO has nothing more; the very same inode is unchanged
    return now.st_size != was.st_size or not _same_bytes(new, old)


class _Differ:
    def __init__(self, before: Path, after: Path, out: Path) -> None:
        self.before, self.after, self.out = str(before), str(after), str(out)
        self.made = {""}  # directories made in ``out`` (relative)
        self.dirs: list[tuple[str, os.stat_result]] = []  # their mtimes, set once all is in
        self.links = Links()  # an inode of ``after`` -> its copy in ``out``
        self.kept: dict[tuple[int, int], list[str]] = {}  # unchanged names of hardlinked files

    def run(self) -> None:
        self._compare("")
        for key, names in self.kept.items():  # a hardlinked file written: all its names are
            for relative in names if key in self.links else ():
                self._directory(os.path.dirname(relative))
                os.link(self.links[key], os.path.join(self.out, relative))
        _dir_times(self.dirs)

    def _directory(self, relative: str, opaque: bool = False) -> None:
        """``relative`` made in ``out`` with the metadata it has in ``after``, parents first."""
        target = os.path.join(self.out, relative)
        if relative not in self.made:
            self._directory(os.path.dirname(relative))
            source = os.path.join(self.after, relative)
            info = os.lstat(source)
            _put(source, target, info, self.links, OVERLAY_XATTRS)
            self.dirs.append((target, info))
            self.made.add(relative)
        if opaque:
            os.setxattr(target, OPAQUE_XATTR, b"y", follow_symlinks=False)

    def _copy(self, relative: str, info: os.stat_result, opaque: bool = False) -> None:
        """A new or replaced entry, a directory with all it holds."""
        self._directory(os.path.dirname(relative))
        source, target = os.path.join(self.after, relative), os.path.join(self.out, relative)
        if stat.S_ISDIR(info.st_mode):
            self._directory(relative, opaque)
            _copy_below(source, target, self.links, OVERLAY_XATTRS, self.dirs)
        else:
            _put(source, target, info, self.links, OVERLAY_XATTRS)

    def _compare(self, relative: str) -> None:
        now = set(os.listdir(os.path.join(self.after, relative)))
        old = set(os.listdir(os.path.join(self.before, relative)))
        if relative and old and not now & old:  # nothing of it survived: as `rm -rf d; mkdir d` makes it
            self._directory(relative, opaque=True)
            old = set()
        for name in sorted(now | old, key=os.fsencode):
            child = os.path.join(relative, name)
            new_path, old_path = os.path.join(self.after, child), os.path.join(self.before, child)
            if name not in now:  # deleted: one whiteout, whatever it held
                self._directory(relative)
                os.mknod(os.path.join(self.out, child), stat.S_IFCHR | 0o600, 0)
                continue
            info = os.lstat(new_path)
            was = os.lstat(old_path) if name in old else None
            if was is None or stat.S_IFMT(info.st_mode) != stat.S_IFMT(was.st_mode):
                # a directory that replaced something else is opaque, as overlayfs makes it
                self._copy(child, info, opaque=was is not None and stat.S_ISDIR(info.st_mode))
            elif stat.S_ISDIR(info.st_mode):
                if _differs(new_path, old_path, info, was):
                    self._directory(child)
                self._compare(child)
            elif _differs(new_path, old_path, info, was):
                self._copy(child, info)
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                self.kept.setdefault((info.st_dev, info.st_ino), []).append(child)


def diff_trees(before: Path, after: Path, out: Path) -> None:
    """Write into ``out`` (an empty directory) the changes from ``before`` to ``after`` in overlay
    format, where overlayfs cannot mount: ``after`` is a copy of ``before`` (mtimes kept to the
    nanosecond, as ``snapshot.materialize`` copies) that a ``RUN`` then changed.

    An entry is new when ``before`` has none of its name and type; changed when its mode, owner,
    mtime (ns), xattrs, symlink target, device or size differ, or else, for a regular file, when
    its bytes do: a copy's ctime says nothing, and a step may put an mtime back (``tar -x``,
    ``touch -r``, package managers), so equal metadata is no proof. New and changed entries are
    copied (reflinked where the filesystem can) with the directories on their way; a deleted
    entry is one whiteout, a directory included; a directory none of whose former entries
    survive is opaque, as overlayfs makes ``rm -rf d && mkdir d``; a hardlinked file written
    brings all its names.
    """
    _Differ(Path(before), Path(after), Path(out)).run()
