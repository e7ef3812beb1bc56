"""Damaged layers: any byte of a real layer changed, or the layer cut short, is one error line at most.

The seed layer holds every kind of member the unpacker reads (directories, files,
symlinks, hardlinks, PAX records with xattrs, a GNU long name, a GNU sparse file made by
GNU tar); hypothesis then flips bytes and truncates it. Whatever the result, apply_layer
either succeeds or raises PierError (what the CLI prints as one line), never anything
else, and nothing outside the rootfs changes.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puller.errors import PierError
from puller.unpack.layers import apply_layer

from .layers import entry, make_tar, untouched

pytestmark = pytest.mark.slow  # hypothesis over damaged layers

TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@functools.cache
def seed_layer() -> bytes:
    """A small layer with one member of every kind, the sparse one written by GNU tar."""
    xattr = entry("bin/ping", mode=0o755)
    xattr.pax_headers = {"SCHILY.xattr.user.pier": "cap"}
    members = make_tar(
        [
            (entry("bin", tarfile.DIRTYPE, mode=0o755), None),
            (xattr, b"\x7fELF" * 64),
            (entry("bin/sh", tarfile.SYMTYPE, link="ping"), None),
            (entry("bin/ping6", tarfile.LNKTYPE, link="bin/ping"), None),
            (entry("d" * 150 + "/long-name"), b"long"),
            (entry("etc/.wh.gone"), b""),
        ]
    ).getvalue()
    with tempfile.TemporaryDirectory() as scratch:
        sparse = Path(scratch) / "sparse"
        with sparse.open("wb") as f:
            f.truncate(1 << 20)
            f.seek(8192)
            f.write(b"data" * 300)
        made = subprocess.run(
            ["tar", "--sparse", "--format=gnu", "-cf", "-", "-C", scratch, "sparse"],
            capture_output=True,
            check=True,
        )
    end = -(-len(members.rstrip(b"\0")) // 512) * 512  # without the end-of-archive blocks
    return members[:end] + made.stdout


def damaged(layer: bytes, changes: list[tuple[int, int]], cut: int | None, checksums: bool = False) -> bytes:
    """``layer`` with bytes changed, cut at ``cut``; with ``checksums``, its headers' checksums made right
    again, so the damage reaches the parser beyond its checksum test."""
    data = bytearray(layer)
    for position, value in changes:
        data[position % len(data)] = value
    if checksums:
        for start in range(0, len(layer) - 511, 512):
            if layer[start + 257 : start + 262] == b"ustar":
                data[start + 148 : start + 156] = b" " * 8
                data[start + 148 : start + 156] = b"%06o\0 " % sum(data[start : start + 512])
    return bytes(data[:cut] if cut is not None else data)


changes = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=6)
cuts = st.none() | st.integers(min_value=0, max_value=40_000)


def check(layer: bytes, media_type: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="pier-fuzz-"))
    try:
        outside = base / "outside"
        outside.mkdir()
        (outside / "file").write_bytes(b"precious")
        before = untouched(outside)
        try:
            apply_layer(base / "rootfs", io.BytesIO(layer), media_type, "sha256:damaged")
        except PierError as exc:
            assert "\n" not in str(exc)
        assert untouched(outside) == before
        assert sorted(os.listdir(base)) == ["outside", "rootfs"]
    finally:
        shutil.rmtree(base)


def test_the_seed_layer_unpacks(tmp_path) -> None:
    apply_layer(tmp_path, io.BytesIO(seed_layer()), TAR, "sha256:seed")
    assert os.getxattr(tmp_path / "bin/ping", "user.pier") == b"cap"
    assert (tmp_path / "bin/ping6").stat().st_ino == (tmp_path / "bin/ping").stat().st_ino
    assert (tmp_path / ("d" * 150) / "long-name").read_bytes() == b"long"
    sparse = tmp_path / "sparse"
    assert sparse.stat().st_size == 1 << 20 and sparse.stat().st_blocks * 512 < 64 * 1024


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes, cuts, st.booleans())
def test_a_damaged_tar_layer_is_unpacked_or_refused_in_one_line(changes, cut, checksums) -> None:
    check(damaged(seed_layer(), changes, cut, checksums), TAR)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes, cuts)
def test_a_damaged_gzip_layer_is_unpacked_or_refused_in_one_line(changes, cut) -> None:
    check(damaged(gzip.compress(seed_layer(), mtime=0), changes, cut), GZIP)
