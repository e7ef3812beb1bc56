"""The unpacker against hostile layers that target its per-layer parent cache, and random ones.

Within a layer, a parent directory resolved once is remembered. An attacker's move is to
let a directory be resolved, then turn that name into a symlink pointing out (by a
whiteout, a replacement, a hardlink to a symlink) and write through the old name again.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puller.unpack import UnsafeLayer

from .test_client_unpack import apply, entry

D, S, L, F = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE


def snapshot(directory: Path) -> dict[str, tuple]:
    """Everything outside the rootfs that a broken unpacker could touch."""
    found = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        found[str(path)] = (info.st_mode, info.st_mtime_ns, info.st_size, info.st_nlink)
    return found


@pytest.fixture
def sandbox(tmp_path) -> tuple[Path, Path]:
    """(rootfs, outside): ``outside`` holds a file and a folder that must never change."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "file").write_bytes(b"precious")
    return tmp_path / "rootfs", outside


@pytest.mark.parametrize(
    "entries",
    [
        # resolve d, replace d by a symlink out (a whiteout, then a symlink), write through d
        [
            (entry("d", D), None),
            (entry("d/a"), b"x"),
            (entry(".wh.d"), b""),
            (entry("d", S, link="{out}"), None),
            (entry("d/b"), b"x"),
        ],
        # the same with a file replacing the directory first, then the symlink
        [
            (entry("d", D), None),
            (entry("d/a"), b"x"),
            (entry("d"), b"file"),
            (entry("d", S, link="{out}"), None),
            (entry("d/b"), b"x"),
        ],
        # a hardlink to an earlier symlink creates a second symlink pointing out
        [
            (entry("s", S, link="{out}"), None),
            (entry("d", D), None),
            (entry("d/a"), b"x"),
            (entry(".wh.d"), b""),
            (entry("d", L, link="s"), None),
            (entry("d/b"), b"x"),
        ],
        # an opaque marker empties a resolved directory, then a symlink takes a child's name
        [
            (entry("d/e", D), None),
            (entry("d/e/a"), b"x"),
            (entry("d/.wh..wh..opq"), b""),
            (entry("d/e", S, link="{out}"), None),
            (entry("d/e/b"), b"x"),
        ],
    ],
    ids=["whiteout-then-symlink", "file-then-symlink", "hardlink-to-symlink", "opaque-then-symlink"],
)
def test_a_resolved_parent_turned_into_a_symlink_is_followed_inside(sandbox, entries) -> None:
    rootfs, outside = sandbox
    before = snapshot(outside)
    prepared = []
    for info, data in entries:
        if info.linkname == "{out}":
            info.linkname = str(outside / "folder")  # absolute: must resolve inside the rootfs
        prepared.append((info, data))
    apply(rootfs, prepared)
    assert snapshot(outside) == before
    written = rootfs / str(outside / "folder").lstrip("/") / "b"
    assert written.read_bytes() == b"x"  # the write landed where the container will see it


@pytest.mark.parametrize("name", [".wh.", "d/.wh..", "d/.wh.."])
def test_a_whiteout_of_no_name_or_dotdot_is_refused(sandbox, name) -> None:
    rootfs, outside = sandbox
    before = snapshot(outside)
    with pytest.raises(UnsafeLayer, match="whiteout of no name"):
        apply(rootfs, [(entry("d", D), None), (entry(name), b"")])
    assert snapshot(outside) == before and (rootfs / "d").is_dir()


names = st.sampled_from(["a", "b", "a/b", "a/c", "b/c", "a/b/c", ".wh.a", "a/.wh.b", "a/.wh..wh..opq"])
targets = st.sampled_from(["a", "b", "..", "../..", "/", "/a", "{out}", "{out}/x", "a/../..", "../outside"])
members = st.tuples(st.sampled_from([D, S, L, F]), names, targets)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(members, min_size=1, max_size=8), min_size=1, max_size=3))
def test_random_layers_never_touch_anything_outside(tmp_path_factory, layers) -> None:
    base = tmp_path_factory.mktemp("prop")
    rootfs, outside = base / "rootfs", base / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "file").write_bytes(b"precious")
    before = snapshot(outside)
    for layer in layers:
        prepared = []
        for kind, name, target in layer:
            link = target.replace("{out}", str(outside)) if kind in (S, L) else ""
            prepared.append((entry(name, kind, link=link), b"data" if kind == F else None))
        # Refusing, or failing on a self-contradicting layer, is allowed; escaping is not.
        with contextlib.suppress(UnsafeLayer, FileExistsError, IsADirectoryError, NotADirectoryError):
            apply(rootfs, prepared)
        assert snapshot(outside) == before
        assert sorted(os.listdir(base)) == ["outside", "rootfs"]
