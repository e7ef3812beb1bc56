"""``pier build``'s layers: a step's directory (overlay format) as a reproducible layer tar,
adopted into the layer store, and the copy-based diff for where overlayfs cannot mount."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from puller.build.layer_writer import (
    UnsupportedDiff,
    WrittenLayer,
    adopt,
    diff_trees,
    media_type_for,
    write_layer,
)
from puller.run.overlay import OverlayUnavailable, mount_overlay, unmount
from puller.unpack.layer_store import LayerStore
from puller.unpack.layers import OPAQUE_XATTR, apply_layer, is_whiteout
from puller.unpack.snapshot import materialize

OLD = 946_684_800  # 2000-01-01: a base image's files, older than the epoch
EPOCH = 1_600_000_000
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"  # 1024 zero bytes


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(diff: Path, epoch: int | None = EPOCH, compression: str = "none") -> tuple[bytes, WrittenLayer]:
    out = io.BytesIO()
    written = write_layer(diff, out, epoch=epoch, compression=compression)
    return out.getvalue(), written


def raw_headers(data: bytes) -> Iterator[tuple[str, bytes, dict[str, bytes], bytes]]:
    """(typeflag, ustar name, PAX records, uname+gname) of each member, read from the bytes."""
    offset, pax = 0, {}
    while offset + 512 <= len(data) and data[offset : offset + 512].strip(b"\0"):
        block = data[offset : offset + 512]
        kind, size = chr(block[156]), int(block[124:136].strip(b"\0 ") or b"0", 8)
        body = data[offset + 512 : offset + 512 + size]
        offset += 512 + -(-size // 512) * 512
        if kind == "x":
            while body:
                length = int(body.split(b" ", 1)[0])
                key, _, value = body[:length].split(b" ", 1)[1].partition(b"=")
                pax[key.decode()], body = value[:-1], body[length:]
            continue
        yield kind, block[:100].rstrip(b"\0"), pax, block[265:329].strip(b"\0")
        pax = {}


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, 0)


def build_tree(root: Path, pad: bool, mtime: int) -> None:
    """The same content, whatever its inode numbers (``pad`` shifts them) and mtimes."""
    root.mkdir()
    long = "l" * 150
    steps: list[Callable[[], object]] = [
        lambda: (root / "etc").mkdir(mode=0o755),
        lambda: (root / "etc" / "passwd").write_text("root:x:0:0\n"),
        lambda: (root / "usr" / "bin").mkdir(parents=True),
        lambda: (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 5000),
        lambda: os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "alias"),
        lambda: os.symlink("../etc/passwd", root / "usr" / "passwd"),
        lambda: os.mkfifo(root / "fifo"),
        lambda: (root / long).write_text("long name"),
        lambda: (root / "héllo").write_text("non-ascii"),
        lambda: whiteout(root / "gone"),
        lambda: (root / "opaque").mkdir(),
        lambda: os.setxattr(root / "opaque", OPAQUE_XATTR, b"y"),
        lambda: (root / "opaque" / "inside").write_text("kept"),
        lambda: os.setxattr(root / "etc" / "passwd", "user.note", b"\xff binary"),
        lambda: os.setxattr(
            root / "usr" / "bin" / "tool", "security.capability", b"\x01\x00\x00\x02" + bytes(16)
        ),
    ]
    if pad:  # other inode numbers: files made and deleted first
        for index in range(20):
            (root / f"pad{index}").write_text("x")
        for index in range(20):
            (root / f"pad{index}").unlink()
    for step in steps:
        step()
    os.chmod(root / "usr" / "bin" / "tool", 0o4755)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def test_the_same_tree_gives_the_same_bytes_whenever_and_however_it_was_made(tmp_path) -> None:
    now = int(time.time())
    build_tree(tmp_path / "a", pad=False, mtime=now)
    build_tree(tmp_path / "b", pad=True, mtime=now + 1000)
    assert (tmp_path / "a" / "etc").stat().st_ino != (tmp_path / "b" / "etc").stat().st_ino
    for compression in ("gzip", "zstd", "none"):
        first, second = (
            layer(tmp_path / "a", compression=compression),
            layer(tmp_path / "b", compression=compression),
        )
        assert first == second
    data, _ = layer(tmp_path / "a")
    names = [member.name for member in members(data)]
    assert names[:4] == ["etc", "etc/passwd", "fifo", ".wh.gone"]  # a whiteout sorts by the name it hides
    assert names.index("opaque") + 1 == names.index("opaque/.wh..wh..opq")
    assert names.index("usr/bin/alias") < names.index("usr/bin/tool")
    headers = list(raw_headers(data))
    assert [name for kind, name, _, _ in headers if kind == "5"] == [
        b"etc/",
        b"opaque/",
        b"usr/",
        b"usr/bin/",
    ]
    assert not any(name.startswith((b"./", b"/")) for _, name, _, _ in headers)
    for _, _, pax, owners in headers:
        assert owners == b"" and not {"atime", "ctime", "uname", "gname"} & set(pax)
        assert not any("overlay" in key for key in pax)
    found = {member.name: member for member in members(data)}
    assert found["usr/bin/alias"].isfile() and found["usr/bin/tool"].islnk()
    assert found["usr/bin/tool"].linkname == "usr/bin/alias"  # the first name in order has the data
    assert found["usr/bin/alias"].mode == 0o4755
    assert found["usr/passwd"].issym() and found["usr/passwd"].linkname == "../etc/passwd"
    assert found["fifo"].isfifo() and found["l" * 150].isfile() and "héllo" in found
    assert found["etc/passwd"].pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == (
        b"\xff binary"
    )
    assert "SCHILY.xattr.security.capability" in found["usr/bin/alias"].pax_headers
    assert {member.mtime for name, member in found.items() if ".wh." not in name} == {EPOCH}
    for name in (".wh.gone", "opaque/.wh..wh..opq"):
        marker = found[name]
        assert (marker.isfile(), marker.size, marker.mode, marker.uid, marker.gid, marker.mtime) == (
            True,
            0,
            0,
            0,
            0,
            0,
        )


def test_without_an_epoch_the_real_mtimes_are_kept_in_seconds(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file").write_text("x")
    os.utime(tmp_path / "d" / "file", ns=(0, 1_700_000_000_987_654_321))
    data, _ = layer(tmp_path / "d", epoch=None)
    assert members(data)[0].mtime == 1_700_000_000
    data, _ = layer(tmp_path / "d", epoch=1_800_000_000)  # older than the epoch: kept
    assert members(data)[0].mtime == 1_700_000_000


def test_digests_sizes_and_media_types_are_those_of_the_bytes(tmp_path) -> None:
    build_tree(tmp_path / "tree", pad=False, mtime=OLD)
    blob, written = layer(tmp_path / "tree", compression="gzip")
    assert blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\0\0\0\0"  # no name, mtime 0
    raw = gzip.decompress(blob)
    assert written.digest == sha256(blob) and written.size == len(blob)
    assert written.diff_id == sha256(raw) and not written.empty
    assert written.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob, written = layer(tmp_path / "tree", compression="zstd")
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)) as reader:
        assert sha256(reader.read()) == written.diff_id == sha256(raw)
    assert written.digest == sha256(blob) and written.media_type.endswith("+zstd")
    blob, written = layer(tmp_path / "tree", compression="none")
    assert written.diff_id == written.digest == sha256(blob) == sha256(raw)
    assert written.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert media_type_for("gzip", docker=True) == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert media_type_for("none", docker=True) == "application/vnd.docker.image.rootfs.diff.tar"


def test_an_empty_directory_is_the_well_known_empty_layer(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    data, written = layer(tmp_path / "empty")
    assert written.empty and data == bytes(1024) and written.diff_id == EMPTY_LAYER


def test_overlay_bookkeeping_never_reaches_the_tar_and_renames_are_refused(tmp_path) -> None:
    upper = tmp_path / "upper"
    (upper / "dir").mkdir(parents=True)
    (upper / "dir" / "file").write_text("x")
    os.setxattr(upper / "dir", "trusted.overlay.impure", b"y")
    os.setxattr(upper / "dir" / "file", "trusted.overlay.origin", b"\0" * 20)
    os.setxattr(upper / "dir" / "file", "user.overlay.opaque", b"y")  # not on a directory: no marker
    os.setxattr(upper / "dir" / "file", "user.kept", b"1")
    data, _ = layer(upper)
    pax = {member.name: member.pax_headers for member in members(data)}
    assert list(pax) == ["dir", "dir/file"] and pax["dir/file"] == {"SCHILY.xattr.user.kept": "1"}
    for feature in ("redirect", "metacopy"):
        os.setxattr(
            upper / "dir", f"trusted.overlay.{feature}", b"/elsewhere" if feature == "redirect" else b""
        )
        with pytest.raises(UnsupportedDiff, match=feature):
            layer(upper)
        os.removexattr(upper / "dir", f"trusted.overlay.{feature}")
    (upper / "dir" / ".wh.file").write_text("a real file of a whiteout's name")
    with pytest.raises(UnsupportedDiff, match="whiteout"):
        layer(upper)


def view(root: Path) -> dict[str, tuple]:
    """What a container sees of a tree, mtimes aside: types, modes, owners, content, targets,
    xattrs, and which names share an inode."""
    found: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*")):
        info, relative = path.lstat(), str(path.relative_to(root))
        xattrs = {
            k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)
        }
        xattrs = {k: v for k, v in xattrs.items() if ".overlay." not in k}
        if stat.S_ISLNK(info.st_mode):
            content: object = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            inodes.setdefault(info.st_ino, []).append(relative)
        else:
            content = info.st_rdev if stat.S_ISCHR(info.st_mode) else None
        found[relative] = (
            stat.S_IFMT(info.st_mode),
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
            content,
            xattrs,
        )
    found["<hardlinks>"] = tuple(sorted(tuple(names) for names in inodes.values() if len(names) > 1))
    return found


def make_lower(root: Path) -> None:
    for folder in ("sub/deep", "deldir/inner", "opq/kid"):
        (root / folder).mkdir(parents=True)
    for name, text in {
        "keep.txt": "keep",
        "mod.txt": "old content",
        "same.txt": "AAAA",
        "del.txt": "bye",
        "perm.sh": "#!/bin/sh\n",
        "linked.txt": "linked",
        "sub/deep/file": "deep",
        "deldir/inner/f": "x",
        "deldir/g": "y",
        "opq/x": "x",
        "opq/kid/y": "y",
        "filedir": "a file, then a directory",
    }.items():
        (root / name).write_text(text)
    os.setxattr(root / "perm.sh", "user.note", b"kept through copy-up")
    os.chmod(root / "perm.sh", 0o644)
    os.chown(root / "keep.txt", 1000, 1000)
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        os.utime(path, (OLD, OLD), follow_symlinks=False)


def change(root: Path) -> None:
    """One build step's changes, made through whatever ``root`` is (a mount or a copy)."""
    (root / "new" / "dir").mkdir(parents=True)
    (root / "new" / "dir" / "file.txt").write_text("added")
    with (root / "mod.txt").open("a") as file:
        file.write(", appended")
    (root / "del.txt").unlink()
    for path in sorted((root / "deldir").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "deldir").rmdir()
    (root / "opq" / "kid" / "y").unlink()
    (root / "opq" / "kid").rmdir()
    (root / "opq" / "x").unlink()
    (root / "opq").rmdir()
    (root / "opq").mkdir()
    (root / "opq" / "fresh").write_text("fresh")
    os.chmod(root / "perm.sh", 0o755)
    os.symlink("keep.txt", root / "link")
    os.link(root / "linked.txt", root / "hard.txt")
    (root / "filedir").unlink()
    (root / "filedir").mkdir()
    (root / "filedir" / "now").write_text("a directory")


@pytest.fixture
def overlay(tmp_path) -> Iterator[tuple[Path, Path, Path]]:
    """(lower, upper, merged) after ``change`` ran through a real overlay mount."""
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "merged"))
    for folder in (lower, upper, work, merged):
        folder.mkdir()
    make_lower(lower)
    try:
        mount_overlay(
            [lower], upper, work, merged, {"redirect_dir": "off", "metacopy": "off"}
        )  # as a build mounts
    except OverlayUnavailable as exc:
        pytest.skip(str(exc))
    try:
        change(merged)
        yield lower, upper, merged
    finally:
        unmount(merged)


@pytest.mark.slow
def test_an_overlay_upper_applied_as_a_layer_gives_the_mount_s_view(tmp_path, overlay) -> None:
    lower, upper, merged = overlay
    assert (
        is_whiteout((upper / "deldir").lstat())
        and os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    )
    blob, written = layer(upper, compression="gzip")
    names = [member.name for member in members(gzip.decompress(blob))]
    assert {".wh.del.txt", ".wh.deldir", "opq/.wh..wh..opq"} <= set(names)
    assert not any(name.startswith(("deldir/", "opq/x", "opq/kid")) for name in names)
    for _, _, pax, _ in raw_headers(gzip.decompress(blob)):
        assert not any("trusted.overlay" in key or "user.overlay" in key for key in pax)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    materialize([lower], rootfs)
    apply_layer(rootfs, io.BytesIO(blob), written.media_type, "step", diff_id=written.diff_id)
    expected = view(merged)
    assert expected["perm.sh"][1] == 0o755 and expected["perm.sh"][5] == {
        "user.note": b"kept through copy-up"
    }
    assert expected["<hardlinks>"] == (("hard.txt", "linked.txt"),)
    assert view(rootfs) == expected


@pytest.mark.slow
def test_diff_trees_writes_the_layer_the_overlay_upper_does(tmp_path, overlay) -> None:
    lower, upper, _ = overlay
    after, out = tmp_path / "after", tmp_path / "out"
    after.mkdir()
    out.mkdir()
    materialize([lower], after)  # the copy a RUN changes where overlayfs cannot mount
    change(after)
    diff_trees(lower, after, out)
    from_copy, written = layer(out)
    from_mount, _ = layer(upper)
    assert [m.name for m in members(from_copy)] == [m.name for m in members(from_mount)]
    assert from_copy == from_mount and not written.empty


def test_diff_trees_applied_to_before_gives_after(tmp_path) -> None:
    before, after, out, rootfs = (tmp_path / name for name in ("before", "after", "out", "rootfs"))
    for folder in (before, after, out, rootfs):
        folder.mkdir()
    make_lower(before)
    materialize([before], after)
    change(after)
    # Same size, mtime put back: only the bytes tell.
    (after / "same.txt").write_text("BBBB")
    os.utime(after / "same.txt", (OLD, OLD))
    diff_trees(before, after, out)
    assert is_whiteout((out / "deldir").lstat())  # one whiteout for the directory and all it held
    assert not (out / "keep.txt").exists() and not (out / "sub").exists()
    assert (out / "same.txt").read_text() == "BBBB"
    assert (
        os.getxattr(out / "opq", OPAQUE_XATTR) == b"y" and os.getxattr(out / "filedir", OPAQUE_XATTR) == b"y"
    )
    assert (out / "hard.txt").stat().st_ino == (out / "linked.txt").stat().st_ino
    blob, written = layer(out, epoch=None)
    materialize([before], rootfs)
    apply_layer(rootfs, io.BytesIO(blob), written.media_type, "step")
    assert view(rootfs) == view(after)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    diff_trees(before, before, nothing)
    assert list(nothing.iterdir()) == []


def test_adopt_moves_the_directory_into_the_layer_store_once(tmp_path) -> None:
    home = tmp_path / "home"

    def written_step(name: str) -> Path:
        diff = tmp_path / name
        (diff / "etc").mkdir(parents=True)
        (diff / "etc" / "conf").write_text("conf")
        os.setxattr(diff / "etc" / "conf", "trusted.overlay.origin", b"\0" * 20)
        os.setxattr(diff / "etc", "trusted.overlay.impure", b"y")
        (diff / "opq").mkdir()
        os.setxattr(diff / "opq", "trusted.overlay.opaque", b"y")
        whiteout(diff / "gone")
        return diff

    first = written_step("first")
    blob, written = layer(first, compression="gzip")
    path = adopt(first, home, written.diff_id, written.digest, EPOCH)
    store = LayerStore(home)
    assert path == store.path(written.diff_id) and store.has(written.diff_id) and not first.exists()
    assert (path / "etc" / "conf").read_text() == "conf" and is_whiteout((path / "gone").lstat())
    assert os.listxattr(path / "etc" / "conf") == [] and os.listxattr(path / "etc") == []
    assert os.getxattr(path / "opq", OPAQUE_XATTR) == b"y"
    assert (path / "etc" / "conf").lstat().st_mtime_ns == EPOCH * 1_000_000_000
    info = store.info(written.diff_id)
    assert info is not None and (info.blob, info.size, info.entries) == (written.digest, 4, 5)
    # What the tar unpacks to is what was adopted.
    unpacked = tmp_path / "unpacked"
    apply_layer(unpacked, io.BytesIO(blob), written.media_type, "step", overlay=True, diff_id=written.diff_id)
    assert view(unpacked) == view(path)
    second = written_step("second")
    assert adopt(second, home, written.diff_id, written.digest, EPOCH) == path
    assert not second.exists() and store.all() == [written.diff_id]
    assert [entry.name for entry in store.root.iterdir() if entry.name.startswith(".unpacking")] == []


def test_adopt_copies_when_the_directory_is_on_another_filesystem(tmp_path, monkeypatch) -> None:
    diff = tmp_path / "diff"
    (diff / "dir").mkdir(parents=True)
    (diff / "dir" / "a").write_text("same inode")
    os.link(diff / "dir" / "a", diff / "dir" / "b")
    os.symlink("a", diff / "dir" / "c")
    whiteout(diff / "gone")
    os.setxattr(diff / "dir", OPAQUE_XATTR, b"y")
    _, written = layer(diff)
    rename = os.rename

    def across_devices(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if str(target).endswith("/diff"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        rename(source, target)

    monkeypatch.setattr(os, "rename", across_devices)
    expected = view(diff)
    path = adopt(diff, tmp_path / "home", written.diff_id, written.digest, EPOCH)
    assert not diff.exists() and view(path) == expected
    assert os.getxattr(path / "dir", OPAQUE_XATTR) == b"y" and is_whiteout((path / "gone").lstat())
