"""Unpacking layers into a rootfs: same tree as umoci, and nothing ever written outside."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from puller.unpack.layers import UnsafeLayer, apply_layer

from .images import build_image
from .layers import apply, entry, make_tar, tree, umoci_rootfs


def test_unpacked_image_matches_umoci(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1")
    umoci_rootfs(tmp_path / "layout", "v1", tmp_path / "bundle")
    ours = tmp_path / "ours"
    for layer in image.layers:
        with layer.path.open("rb") as stream:
            apply_layer(ours, stream, layer.media_type, layer.digest)
    expected = tree(tmp_path / "bundle" / "rootfs")
    assert "data/doomed.txt" not in expected  # the image really exercises a whiteout
    assert any(kind[0] == "symlink" for kind in expected.values())
    assert tree(ours) == expected


def test_whiteouts_opaque_dirs_hardlinks_and_type_changes(tmp_path) -> None:
    root = tmp_path / "rootfs"
    apply(
        root,
        [
            (entry("etc", tarfile.DIRTYPE, mode=0o755), None),
            (entry("etc/old.conf"), b"old"),
            (entry("etc/keep.conf"), b"keep"),
            (entry("opt", tarfile.DIRTYPE, mode=0o755), None),
            (entry("opt/lower"), b"lower"),
            (entry("thing", tarfile.DIRTYPE, mode=0o755), None),
            (entry("thing/inside"), b"x"),
            (entry("file-then-dir"), b"file"),
        ],
    )
    apply(
        root,
        [
            (entry("etc/.wh.old.conf"), b""),
            (entry("opt/.wh..wh..opq"), b""),
            (entry("opt/upper"), b"upper"),
            (entry("thing"), b"now a file"),
            (entry("file-then-dir", tarfile.DIRTYPE, mode=0o750), None),
            (entry("data"), b"shared inode"),
            (entry("data-link", tarfile.LNKTYPE, link="data"), None),
            (entry("sym", tarfile.SYMTYPE, link="/etc/keep.conf"), None),
            (entry("pipe", tarfile.FIFOTYPE), None),
        ],
    )
    assert not (root / "etc/old.conf").exists()
    assert (root / "etc/keep.conf").read_bytes() == b"keep"
    assert sorted(p.name for p in (root / "opt").iterdir()) == ["upper"]
    assert (root / "thing").read_bytes() == b"now a file"
    assert (root / "file-then-dir").is_dir() and stat.S_IMODE(
        (root / "file-then-dir").stat().st_mode
    ) == 0o750
    assert (root / "data").stat().st_ino == (root / "data-link").stat().st_ino
    assert os.readlink(root / "sym") == "/etc/keep.conf"
    assert stat.S_ISFIFO((root / "pipe").lstat().st_mode)


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([(entry("../escape"), b"x")], "'..'"),
        ([(entry("a/../../escape"), b"x")], "'..'"),
        ([(entry("/etc/escape"), b"x")], "absolute path"),
        (
            [(entry("out", tarfile.SYMTYPE, link="../../.."), None), (entry("out/escape"), b"x")],
            "outside the rootfs",
        ),
        (
            [
                (entry("d", tarfile.DIRTYPE), None),
                (entry("d/up", tarfile.SYMTYPE, link="../../x"), None),
                (entry("d/up/escape"), b"x"),
            ],
            "outside the rootfs",
        ),
        ([(entry("hard", tarfile.LNKTYPE, link="../outside-file"), None)], "'..'"),
        (
            [
                (entry("out", tarfile.SYMTYPE, link="../.."), None),
                (entry("hard", tarfile.LNKTYPE, link="out/outside-file"), None),
            ],
            "outside the rootfs",
        ),
        (
            [(entry("out", tarfile.SYMTYPE, link="../.."), None), (entry("out/.wh.outside-file"), b"")],
            "outside the rootfs",
        ),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "through-symlink",
        "through-nested-symlink",
        "hardlink-dotdot",
        "hardlink-through-symlink",
        "whiteout-through-symlink",
    ],
)
def test_hostile_layers_never_write_outside(tmp_path, entries, reason: str) -> None:
    root = tmp_path / "box" / "rootfs"
    outside = tmp_path / "outside-file"
    outside.write_bytes(b"precious")
    with pytest.raises(UnsafeLayer, match=reason) as failure:
        apply(root, entries, layer="sha256:hostile")
    assert "layer sha256:hostile" in str(failure.value)
    assert outside.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "outside-file"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "box" / "escape").exists()


def test_symlink_from_an_earlier_layer_is_replaced_not_followed(tmp_path) -> None:
    root = tmp_path / "rootfs"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    apply(root, [(entry("link", tarfile.SYMTYPE, link=str(victim)), None)])
    apply(root, [(entry("link"), b"replaced")])  # a file over the symlink: the symlink goes
    assert victim.read_bytes() == b"precious"
    assert (root / "link").read_bytes() == b"replaced" and not (root / "link").is_symlink()


def test_absolute_symlinks_resolve_inside_the_rootfs(tmp_path) -> None:
    root = tmp_path / "rootfs"
    apply(
        root,
        [
            (entry("usr", tarfile.DIRTYPE, mode=0o755), None),
            (entry("usr/bin", tarfile.DIRTYPE, mode=0o755), None),
            (entry("bin", tarfile.SYMTYPE, link="/usr/bin"), None),
        ],
    )
    apply(root, [(entry("bin/tool", mode=0o755), b"#!/bin/sh\n")])  # merged-/usr images do this
    assert (root / "usr/bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert not Path("/usr/bin/tool").exists() or Path("/usr/bin/tool").read_bytes() != b"#!/bin/sh\n"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_layer_compression(tmp_path, compression: str) -> None:
    import gzip

    import zstandard

    raw = make_tar([(entry("hello.txt"), b"hello\n")]).getvalue()
    data, media_type = {
        "gzip": (gzip.compress(raw), "application/vnd.oci.image.layer.v1.tar+gzip"),
        "zstd": (zstandard.ZstdCompressor().compress(raw), "application/vnd.oci.image.layer.v1.tar+zstd"),
        "none": (raw, "application/vnd.docker.image.rootfs.diff.tar"),
    }[compression]
    apply_layer(tmp_path / "rootfs", io.BytesIO(data), media_type, "layer")
    assert (tmp_path / "rootfs" / "hello.txt").read_bytes() == b"hello\n"
