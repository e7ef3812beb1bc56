"""The client's layer store: one directory per layer, stacked by overlayfs into the image.

Layers are unpacked from real tars (made here, or by ``tests/images.py``) into a real
store; stacks are mounted with the kernel's overlayfs and compared with umoci's unpack
of the same image. Hostile layers must not write, delete or set anything outside their
own directory, and no failed or killed unpack may leave a layer that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from puller.run.overlay import OverlayUnavailable, mount_overlay, unmount
from puller.unpack.layer_store import LayerStore, verified
from puller.unpack.layers import OPAQUE_XATTR, BrokenLayer, UnsafeLayer, is_whiteout
from puller.unpack.snapshot import materialize

from .images import build_image
from .layers import entry, make_tar, tree, umoci_rootfs, untouched

TAR = "application/vnd.oci.image.layer.v1.tar"
D, L, S = tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_layer(store: LayerStore, entries: list) -> tuple[str, Path]:
    """Unpack an uncompressed layer tar made of ``entries``; (diff ID, its directory)."""
    data = make_tar(entries).getvalue()
    diff_id = _digest(data)
    store.unpack(diff_id, verified(io.BytesIO(data), diff_id), TAR, diff_id)
    return diff_id, store.path(diff_id)


@pytest.fixture
def mounted(tmp_path):
    """Mount a stack of layer directories (bottom first); unmounted after the test."""
    targets: list[Path] = []

    def mount(layers: list[Path]) -> Path:
        base = tmp_path / f"mount-{len(targets)}"
        for name in ("upper", "work", "merged"):
            (base / name).mkdir(parents=True)
        mount_overlay(list(reversed(layers)), base / "upper", base / "work", base / "merged")
        targets.append(base / "merged")
        return base / "merged"

    yield mount
    for target in targets:
        unmount(target)


def test_a_stack_of_layers_is_the_tree_umoci_unpacks(tmp_path, mounted) -> None:
    image = build_image(tmp_path / "layout", "v1")
    umoci_rootfs(tmp_path / "layout", "v1", tmp_path / "bundle")
    store = LayerStore(tmp_path / "home")
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        with layer.path.open("rb") as stream:
            assert store.unpack(diff_id, verified(stream, layer.digest), layer.media_type, layer.digest)
    layers = [store.path(diff_id) for diff_id in image.diff_ids]
    expected = tree(tmp_path / "bundle" / "rootfs")
    assert "data/doomed.txt" not in expected  # the image really deletes a lower file
    assert tree(mounted(layers)) == expected  # overlayfs's view
    copy = tmp_path / "copy"
    copy.mkdir()
    materialize(layers, copy)
    assert tree(copy) == expected  # the copy-based snapshot's view
    top = layers[-1] / "data" / "doomed.txt"
    assert is_whiteout(top.lstat())  # stored in overlayfs's own format


def test_whiteouts_and_opaque_directories_hide_only_lower_layers(tmp_path, mounted) -> None:
    store = LayerStore(tmp_path / "home")
    _, lower = store_layer(
        store,
        [
            (entry("etc", D, mode=0o755), None),
            (entry("etc/old.conf"), b"old"),
            (entry("etc/keep.conf"), b"keep"),
            (entry("opt", D, mode=0o755), None),
            (entry("opt/lower"), b"lower"),
            (entry("thing", D, mode=0o755), None),
            (entry("thing/inside"), b"x"),
        ],
    )
    _, upper = store_layer(
        store,
        [
            (entry("etc/.wh.old.conf"), b""),
            (entry("etc/new.conf"), b"new"),
            (entry("etc/.wh.new.conf"), b""),  # hides lower layers only: this layer's file stays
            (entry("opt/upper"), b"upper"),
            (entry("opt/.wh..wh..opq"), b""),  # after its own sibling, which it must keep
            (entry("thing"), b"now a file"),
        ],
    )
    assert is_whiteout((upper / "etc" / "old.conf").lstat())
    assert os.getxattr(upper / "opt", OPAQUE_XATTR) == b"y"
    for view in (mounted([lower, upper]), tmp_path / "copy"):
        if not view.exists():
            view.mkdir()
            materialize([lower, upper], view)
        assert sorted(p.name for p in (view / "etc").iterdir()) == ["keep.conf", "new.conf"]
        assert sorted(p.name for p in (view / "opt").iterdir()) == ["upper"]
        assert (view / "thing").read_bytes() == b"now a file"


def test_a_layer_cannot_steer_the_mount_with_overlay_xattrs(tmp_path) -> None:
    store = LayerStore(tmp_path / "home")
    hostile = entry("dir", D, mode=0o755)
    hostile.pax_headers = {
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.overlay.opaque": "y",
        "SCHILY.xattr.user.kept": "yes",
    }
    _, layer = store_layer(store, [(hostile, None)])
    names = os.listxattr(layer / "dir")
    assert not [name for name in names if ".overlay." in name]
    assert os.getxattr(layer / "dir", "user.kept") == b"yes"


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([(entry("../escape"), b"x")], "'..'"),
        ([(entry("/etc/escape"), b"x")], "absolute path"),
        ([(entry("out", S, link="../../../.."), None), (entry("out/escape"), b"x")], "outside"),
        ([(entry("out", S, link="/"), None), (entry("out/.wh.victim"), b"")], None),
        ([(entry("out", S, link="../../../.."), None), (entry("out/.wh.victim"), b"")], "outside"),
        ([(entry("out", S, link="../../../.."), None), (entry("out/.wh..wh..opq"), b"")], "outside"),
        ([(entry("link", L, link="../../../../outside/victim"), None)], "'..'"),
        ([(entry("link", L, link="victim"), None)], "not a file"),
        ([(entry("d", D), None), (entry("d/.wh.."), b"")], "whiteout of no name"),
    ],
)
def test_hostile_layers_never_touch_anything_outside_their_directory(tmp_path, entries, reason) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must survive")
    home = tmp_path / "home"
    store = LayerStore(home)
    (home / "layers").mkdir(parents=True)
    before = untouched(outside)
    if reason is None:
        store_layer(store, entries)  # an absolute symlink resolves inside the layer: harmless
    else:
        with pytest.raises(UnsafeLayer, match=reason):
            store_layer(store, entries)
        assert store.all() == []
    assert untouched(outside) == before
    if reason is not None:  # nothing half-made stays behind in the store either
        assert [p.name for p in (home / "layers").iterdir() if p.name != ".locks"] == []


def test_a_wrong_diff_id_or_blob_digest_leaves_no_layer(tmp_path) -> None:
    store = LayerStore(tmp_path / "home")
    data = make_tar([(entry("file"), b"content")]).getvalue()
    compressed = gzip.compress(data, mtime=0)
    wrong = _digest(b"something else")
    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    with pytest.raises(BrokenLayer, match="not the diff ID"):
        store.unpack(wrong, verified(io.BytesIO(compressed), _digest(compressed)), gz, _digest(compressed))
    with pytest.raises(BrokenLayer, match="digest mismatch"):
        store.unpack(_digest(data), verified(io.BytesIO(compressed), wrong), gz, wrong)
    assert store.all() == []
    assert [p.name for p in store.root.iterdir() if p.name != ".locks"] == []
    assert store.unpack(
        _digest(data), verified(io.BytesIO(compressed), _digest(compressed)), gz, _digest(compressed)
    )
    assert (store.path(_digest(data)) / "file").read_bytes() == b"content"


SLOW_UNPACK = """
import io, sys, time
from pathlib import Path
from puller.unpack.layer_store import LayerStore, verified

class Slow(io.RawIOBase):
    def __init__(self, data):
        self.data, self.at = data, 0
    def readable(self):
        return True
    def readinto(self, buffer):
        time.sleep(0.01)
        chunk = self.data[self.at : self.at + min(len(buffer), 4096)]
        buffer[: len(chunk)] = chunk
        self.at += len(chunk)
        return len(chunk)

data = Path(sys.argv[2]).read_bytes()
print("started", flush=True)
store = LayerStore(Path(sys.argv[1]))
store.unpack(sys.argv[3], verified(io.BufferedReader(Slow(data)), sys.argv[3]), sys.argv[4], sys.argv[3])
"""


def test_a_killed_unpack_leaves_no_layer_and_the_next_one_completes(tmp_path) -> None:
    files: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (entry(f"dir/file{i}"), os.urandom(2048)) for i in range(300)
    ]
    data = make_tar(files).getvalue()
    (tmp_path / "layer.tar").write_bytes(data)
    diff_id = _digest(data)
    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_UNPACK, str(home), str(tmp_path / "layer.tar"), diff_id, TAR],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        deadline = time.monotonic() + 30
        store = LayerStore(home)
        while not any(store.root.glob(".unpacking-*/diff/dir/file5")):  # well under way
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)  # sleep-ok: polling a child process's progress on disk
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert not store.has(diff_id) and store.all() == []
    assert store.unpack(diff_id, verified(io.BytesIO(data), diff_id), TAR, diff_id)  # the lock died with it
    store.clean_leftovers()
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".locks")] == [
        diff_id.replace(":", "-")
    ]
    assert len(list((store.path(diff_id) / "dir").iterdir())) == 300


def test_many_layers_stack_past_the_old_mount_option_limit(tmp_path, mounted) -> None:
    store = LayerStore(tmp_path / "a-rather-long-home-directory-name-to-make-paths-long")
    layers = [store_layer(store, [(entry(f"file{i:03}"), str(i).encode())])[1] for i in range(80)]
    try:
        merged = mounted(layers)
    except OverlayUnavailable as exc:
        pytest.fail(f"80 layers could not be stacked: {exc}")
    assert len(list(merged.iterdir())) == 80
    assert (merged / "file079").read_bytes() == b"79"


def test_device_nodes_in_a_layer_are_not_whiteouts_unless_0_0(tmp_path) -> None:
    store = LayerStore(tmp_path / "home")
    null = entry("dev/null", tarfile.CHRTYPE, mode=0o666)
    null.devmajor, null.devminor = 1, 3
    _, layer = store_layer(store, [(entry("dev", D, mode=0o755), None), (null, None)])
    info = (layer / "dev" / "null").lstat()
    assert stat.S_ISCHR(info.st_mode) and os.major(info.st_rdev) == 1 and not is_whiteout(info)


def test_worker_processes_unpack_stored_layers_and_report_their_errors_in_one_line(tmp_path) -> None:
    from puller.unpack.workers import LayerFailed, Unpackers

    home = tmp_path / "home"
    good = make_tar([(entry("dir", D, mode=0o755), None), (entry("dir/file"), b"from a worker")]).getvalue()
    bad = make_tar([(entry("../escape"), b"x")]).getvalue()
    blobs = {}
    for name, data in (("good", good), ("bad", bad)):
        blobs[name] = tmp_path / name
        blobs[name].write_bytes(data)
    workers = Unpackers(home, 1)
    try:
        workers.unpack(_digest(good), blobs["good"], TAR, _digest(good))
        with pytest.raises(LayerFailed, match=r"entry '\.\./escape': path contains '\.\.'"):
            workers.unpack(_digest(bad), blobs["bad"], TAR, _digest(bad))
    finally:
        workers.close()
    store = LayerStore(home)
    assert (store.path(_digest(good)) / "dir" / "file").read_bytes() == b"from a worker"
    assert store.all() == [_digest(good)]
    assert not (tmp_path / "escape").exists()


AS_NOBODY = """
import io, json, os, stat, sys, tarfile
from pathlib import Path
from puller.run.overlay import probe
from puller.unpack.layer_store import LayerStore, verified
from puller.unpack.layers import OPAQUE_XATTR, is_whiteout
from puller.unpack.snapshot import materialize

work = Path(sys.argv[1])
store = LayerStore(work / "home")
layers = []
for name in ("lower.tar", "upper.tar"):
    data = (work / name).read_bytes()
    import hashlib
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.unpack(digest, verified(io.BytesIO(data), digest), "application/vnd.oci.image.layer.v1.tar", digest)
    layers.append(store.path(digest))
copy = work / "copy"
copy.mkdir()
materialize(layers, copy)
print(json.dumps({
    "opaque_xattr": OPAQUE_XATTR,
    "opaque": os.getxattr(layers[1] / "opt", OPAQUE_XATTR).decode(),
    "whiteout": is_whiteout((layers[1] / "etc" / "old").lstat()),
    "etc": sorted(os.listdir(copy / "etc")),
    "opt": sorted(os.listdir(copy / "opt")),
    "overlay": probe(store.root),
}))
"""


def test_an_unprivileged_user_gets_user_xattr_layers_and_a_correct_copy(tmp_path) -> None:
    """Without root: whiteouts are still 0/0 devices (Linux 5.8+), opaque marks go to user.overlay.*,
    overlayfs cannot be mounted, and the copy of the stack is the image's tree."""
    work = Path(tempfile.mkdtemp(prefix="pier-nobody-", dir="/tmp"))  # tmp_path's parents are root's, 0700
    try:
        (work / "lower.tar").write_bytes(
            make_tar(
                [
                    (entry("etc", D, mode=0o755), None),
                    (entry("etc/old"), b"old"),
                    (entry("etc/keep"), b"keep"),
                    (entry("opt", D, mode=0o755), None),
                    (entry("opt/lower"), b"lower"),
                ]
            ).getvalue()
        )
        (work / "upper.tar").write_bytes(
            make_tar(
                [
                    (entry("etc/.wh.old"), b""),
                    (entry("opt/.wh..wh..opq"), b""),
                    (entry("opt/upper"), b"upper"),
                ]
            ).getvalue()
        )
        for path in (work, work / "lower.tar", work / "upper.tar"):
            os.chown(path, 65534, 65534)
        ran = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                AS_NOBODY,
                str(work),
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        seen = json.loads(ran.stdout)
        assert seen["opaque_xattr"] == "user.overlay.opaque" and seen["opaque"] == "y"
        assert seen["whiteout"] is True
        assert seen["etc"] == ["keep"] and seen["opt"] == ["upper"]
        assert (
            seen["overlay"] and "refused" in seen["overlay"]
        )  # no privilege: the copy is what a container gets
    finally:
        shutil.rmtree(work, ignore_errors=True)
