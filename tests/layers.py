"""Layer tars made by hand for the unpacker's tests, and a fingerprint of what a layer must
never touch outside its rootfs."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from puller.unpack.layers import apply_layer


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_700_000_000
    return info


# "merged" (pier unpack's: layers applied on one tree) or "overlay" (the layer store's:
# whiteouts recorded as overlayfs does). A test module may switch it (see the hostile tests).
MODE = {"overlay": False}


def apply(
    rootfs: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], layer: str = "test-layer"
) -> None:
    tar = make_tar(entries)
    apply_layer(rootfs, tar, "application/vnd.oci.image.layer.v1.tar", layer, overlay=MODE["overlay"])


def untouched(directory: Path) -> dict[str, tuple]:
    """Everything about a tree an unpacker could change: ctime catches chmod, chown, utime and
    setxattr, even to the same value."""
    found = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        found[str(path)] = (
            info.st_ino,
            info.st_mode,
            info.st_uid,
            info.st_gid,
            info.st_nlink,
            info.st_mtime_ns,
            info.st_ctime_ns,
            content,
        )
    return found


def tree(root: Path) -> dict[str, tuple]:
    """Everything a container would see of a tree: type, mode, owner, content or target."""
    found: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[relative] = ("symlink", os.readlink(path), info.st_uid, info.st_gid)
        elif stat.S_ISDIR(info.st_mode):
            found[relative] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[relative] = (
                "file",
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                digest,
                int(info.st_mtime),
            )
    return found


def umoci_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    """``umoci unpack`` of ``layout:tag`` into ``bundle``: the reference tree to compare with."""
    umoci = shutil.which("umoci") or pytest.fail("umoci is not installed (Debian: apt-get install umoci)")
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return bundle / "rootfs"
