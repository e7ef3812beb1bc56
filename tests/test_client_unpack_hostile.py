"""The unpacker against hostile layers that target its per-layer parent cache, and random ones.

Within a layer, a parent directory resolved once is remembered. An attacker's move is to
let a directory be resolved, then turn that name into a symlink pointing out (by a
whiteout, a replacement, a hardlink to a symlink) and write through the old name again.
The same move works on any path remembered for later, such as the final pass that sets
directory times. Further down: earlier layers' symlinks, and what a review found besides.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puller.unpack.layers import UnsafeLayer

from .layers import MODE, apply, entry, untouched

D, S, L, F = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE


@pytest.fixture(autouse=True, params=["merged", "overlay"])
def unpack_mode(request, monkeypatch) -> str:
    """Every attack runs against ``pier unpack``'s tree and against a layer-store directory."""
    monkeypatch.setitem(MODE, "overlay", request.param == "overlay")
    return request.param


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
    for shared, data in entries:
        info = copy.copy(shared)  # the parameters serve both unpack modes: never edit them
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


names = st.sampled_from(
    [
        "a",
        "b",
        "a/b",
        "a/c",
        "b/c",
        "a/b/c",
        ".wh.a",
        "a/.wh.b",
        "a/b/.wh.c",
        ".wh..wh..opq",
        "a/.wh..wh..opq",
        "b/.wh..wh..opq",
        ".wh.",
        "a/.wh..",
        ".wh...",
    ]
)
targets = st.sampled_from(
    [
        "a",
        "b",
        "a/b",
        ".",
        "..",
        "../..",
        "/",
        "/..",
        "/a",
        "{out}",
        "{out}/x",
        "{out}/file",
        "a/../..",
        "b/../../outside",
        "../outside",
        "../outside/file",
    ]
)
members = st.tuples(st.sampled_from([D, S, L, F, tarfile.FIFOTYPE]), names, targets)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(members, min_size=1, max_size=8), min_size=1, max_size=3))
def test_random_layers_never_touch_anything_outside(tmp_path_factory, layers) -> None:
    base = tmp_path_factory.mktemp("prop")
    rootfs, outside = base / "rootfs", base / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "file").write_bytes(b"precious")
    before = untouched(outside)
    for layer in layers:
        prepared = []
        for kind, name, target in layer:
            info = entry(name, kind, link=target.replace("{out}", str(outside)) if kind in (S, L) else "")
            info.pax_headers = {"SCHILY.xattr.user.pier": "hostile"}
            prepared.append((info, b"data" if kind == F else None))
        # Refusing, or failing on a self-contradicting layer, is allowed; escaping is not.
        with contextlib.suppress(UnsafeLayer):
            apply(rootfs, prepared)
        assert untouched(outside) == before
        assert sorted(os.listdir(base)) == ["outside", "rootfs"]


@pytest.mark.parametrize("link", ["../outside", "{out}", "a"], ids=["relative", "absolute", "loop"])
def test_directory_times_are_never_set_through_a_parent_turned_symlink(sandbox, link) -> None:
    # The last pass sets each directory's mtime by path, after the whole layer: a later entry
    # may have replaced a parent by a symlink, which lstat/utime then follow.
    rootfs, outside = sandbox
    link = str(outside) if link == "{out}" else link
    before = untouched(outside)
    apply(
        rootfs,
        [
            (entry("a", D, mode=0o755), None),
            (entry("a/folder", D, mode=0o700), None),
            (entry("a", S, link=link), None),
        ],
    )
    assert untouched(outside) == before
    assert os.readlink(rootfs / "a") == link


def test_long_symlink_chains_cost_linear_time(sandbox) -> None:
    # 40 hops, each prepending ~2000 components: popping them from a list's head was
    # quadratic, about a second per walk; every symlink entry empties the parent cache.
    rootfs, _ = sandbox
    dots = "/." * 2000
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [(entry("d", D, mode=0o755), None)]
    entries += [(entry(f"s{k}", S, link=f"s{k + 1}{dots}"), None) for k in range(39)]
    entries.append((entry("s39", S, link="d"), None))
    for k in range(10):
        entries += [(entry(f"s0/f{k}"), b"x"), (entry(f"l{k}", S, link="d"), None)]
    start = time.monotonic()
    apply(rootfs, entries)
    assert time.monotonic() - start < 3
    assert sorted(os.listdir(rootfs / "d")) == [f"f{k}" for k in range(10)]


def test_xattrs_of_regular_files_are_kept(sandbox) -> None:
    # Set through the open descriptor, where follow_symlinks=False is a ValueError: every
    # layer with a file capability (ping's cap_net_raw) failed to unpack.
    rootfs, _ = sandbox
    info = entry("ping", mode=0o755)
    info.pax_headers = {"SCHILY.xattr.user.pier": "kept"}
    apply(rootfs, [(info, b"\x7fELF")])
    assert os.getxattr(rootfs / "ping", "user.pier") == b"kept"


def test_a_file_in_the_way_of_a_deeper_entry_is_replaced_and_a_whiteout_under_it_is_a_no_op(sandbox) -> None:
    # lstat below a regular file is ENOTDIR, not ENOENT: both entries used to fail the layer.
    rootfs, outside = sandbox
    before = untouched(outside)
    apply(rootfs, [(entry("f"), b"file"), (entry("f/.wh.x"), b""), (entry("g"), b"file")])
    assert (rootfs / "f").read_bytes() == b"file"
    apply(rootfs, [(entry("g/sub/deep"), b"deep")])
    assert (rootfs / "g/sub/deep").read_bytes() == b"deep"
    assert untouched(outside) == before


@pytest.mark.parametrize(
    ("lower", "upper", "refused"),
    [
        ([("f", S, "{out}/file")], [("f", F, "")], False),  # chmod/utime/xattr: the new file only
        ([("d", S, "{out}/x")], [("d", D, "")], False),  # chmod of a directory over the symlink
        ([("d", S, "{out}")], [("d/.wh..wh..opq", F, "")], False),  # opaque: inside, /{out}
        ([("d", S, "{out}")], [("d/.wh.file", F, "")], False),
        ([("d", S, "/")], [("h", L, "d/etc/none")], True),  # contained, and there is no such file
        ([("d", S, "{out}")], [("h", L, "d/file")], True),
        ([], [("h", L, "{out}/file")], True),  # absolute hardlink names are refused
        ([("a", D, "")], [("h", L, "a/../../outside/file")], True),
        ([("d", S, "../outside")], [("d/file", F, "")], True),
        ([("d", S, "a/../..")], [("d/.wh..wh..opq", F, "")], True),
    ],
    ids=[
        "file-over-symlink",
        "dir-over-symlink",
        "opaque-through-absolute-symlink",
        "whiteout-through-absolute-symlink",
        "hardlink-through-root-symlink",
        "hardlink-through-absolute-symlink",
        "hardlink-absolute",
        "hardlink-dotdot",
        "file-through-relative-symlink",
        "opaque-through-dotdot-symlink",
    ],
)
def test_an_earlier_layers_symlink_never_leads_out(sandbox, lower, upper, refused) -> None:
    rootfs, outside = sandbox
    before = untouched(outside)

    def layer(specs: list[tuple[str, bytes, str]]) -> list:
        prepared = []
        for name, kind, link in specs:
            info = entry(name, kind, link=link.replace("{out}", str(outside)), mode=0o4777)
            info.pax_headers = {"SCHILY.xattr.user.pier": "hostile"}
            prepared.append((info, b"hostile" if kind == F else None))
        return prepared

    apply(rootfs, layer(lower))
    if refused:
        with pytest.raises(UnsafeLayer):
            apply(rootfs, layer(upper))
    else:
        apply(rootfs, layer(upper))
    assert untouched(outside) == before


def test_a_time_beyond_what_the_platform_holds_is_clamped_not_a_crash(tmp_path) -> None:
    """Found by the fuzzer: a header byte set to 0xff makes an mtime no time_t holds."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    folder, data = entry("far", tarfile.DIRTYPE, mode=0o755), entry("far/future.bin")
    folder.mtime = data.mtime = 8**30  # base-256 in the header: ~1.2e27 seconds
    data.size = 3
    apply(rootfs, [(folder, None), (data, b"abc")])
    assert (rootfs / "far" / "future.bin").read_bytes() == b"abc"
    # Clamped to the year 9999, then to what the file system keeps (ext4: the year 2446).
    assert (rootfs / "far" / "future.bin").stat().st_mtime > 4_102_444_800  # after 2100
