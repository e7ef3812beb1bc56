"""`pier load` of hostile or damaged archives: one error line or a clean load, never a traceback.

The hostile cases are JSON nested deeper than Python's recursion limit (index.json,
oci-layout, manifest.json, a config) and a damaged zstd layer. The fuzz test damages a
small docker archive and a small OCI layout tar in every way hypothesis finds (bytes
flipped, cut short, members replaced) and runs ``pier load`` in-process: it exits 0 or
1 with one line on stderr, raises nothing, and writes nothing outside PIER_HOME.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from puller.cli import main

from .helpers import run_pier

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, hypothesis

DEEP = b"[" * 100_000  # json.loads raises RecursionError on this
OCI_LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@functools.cache
def docker_files() -> dict[str, bytes]:
    """A legacy ``docker save`` tar's members: a gzip and a zstd layer and their config."""
    plain = [layer("etc/motd", b"hello\n"), layer("bin/tool", b"\x7fELF" * 32)]
    stored = [gzip.compress(plain[0], mtime=0), zstandard.ZstdCompressor().compress(plain[1])]
    config = json.dumps(
        {
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": list(map(sha256, plain))},
        }
    ).encode()
    names = ["layer0.tar", "layer1.tar"]
    manifest = [{"Config": "config.json", "RepoTags": ["hostile/load:v1"], "Layers": names}]
    return {
        "config.json": config,
        **dict(zip(names, stored, strict=True)),
        "manifest.json": json.dumps(manifest).encode(),
    }


@functools.cache
def layout_files() -> dict[str, bytes]:
    """An OCI layout tar's members: one image of one gzip layer."""
    plain = layer("etc/motd", b"hello\n")
    stored = gzip.compress(plain, mtime=0)
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [sha256(plain)]}}
    ).encode()
    descriptor = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": sha256(stored),
        "size": len(stored),
    }
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": sha256(config),
        "size": len(config),
    }
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_descriptor,
            "layers": [descriptor],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest),
                "size": len(manifest),
                "annotations": {
                    "org.opencontainers.image.ref.name": "v1",
                    "io.containerd.image.name": "hostile/layout:v1",
                },
            }
        ],
    }
    blobs = {f"blobs/sha256/{sha256(data)[7:]}": data for data in (stored, config, manifest)}
    return {"oci-layout": OCI_LAYOUT, "index.json": json.dumps(index).encode(), **blobs}


def assert_one_line_error(result) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("pier: ") and result.stderr.count("\n") == 1, result.stderr


def test_the_seeds_load(tmp_path) -> None:
    """The fuzz test's seeds are real archives: undamaged, they load."""
    for name, files in (("docker", docker_files()), ("layout", layout_files())):
        loaded = run_pier(tmp_path / name, "load", "-i", str(write_tar(tmp_path / f"{name}.tar", files)))
        assert loaded.returncode == 0, loaded.stderr
        assert "Loaded " in loaded.stdout


@pytest.mark.parametrize("member", ["index.json", "oci-layout"])
def test_a_layout_with_json_nested_too_deep_is_one_line(tmp_path, member) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    for name, data in {**layout_files(), member: DEEP}.items():
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(data)
    assert_one_line_error(run_pier(tmp_path / "home", "load", "-i", str(layout)))


@pytest.mark.parametrize("member", ["manifest.json", "config.json"])
def test_a_docker_archive_with_json_nested_too_deep_is_one_line(tmp_path, member) -> None:
    archive = write_tar(tmp_path / "in.tar", {**docker_files(), member: DEEP})
    assert_one_line_error(run_pier(tmp_path / "home", "load", "-i", str(archive)))


def test_a_damaged_zstd_layer_in_a_docker_archive_is_one_line(tmp_path) -> None:
    damaged = b"\x28\xb5\x2f\xfd" + b"\x00not a zstd frame" * 8  # zstd's magic, then garbage
    archive = write_tar(tmp_path / "in.tar", {**docker_files(), "layer1.tar": damaged})
    result = run_pier(tmp_path / "home", "load", "-i", str(archive))
    assert_one_line_error(result)
    assert "layer1.tar cannot be decompressed" in result.stderr


def test_a_compressed_tar_with_a_bad_checksum_is_one_line(tmp_path) -> None:
    plain = write_tar(tmp_path / "in.tar", docker_files()).read_bytes().rstrip(b"\0")  # no end marker:
    packed = bytearray(gzip.compress(plain, compresslevel=0, mtime=0))  # tar reads to the gzip trailer
    packed[600] ^= 0xFF  # in config.json, stored, not deflated: it still decompresses, the CRC fails
    (tmp_path / "in.tar.gz").write_bytes(packed)
    result = run_pier(tmp_path / "home", "load", "-i", str(tmp_path / "in.tar.gz"))
    assert_one_line_error(result)
    assert "damaged" in result.stderr


def _flip(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in changes:
        if out:
            out[position % len(out)] ^= value or 1
    return bytes(out)


@st.composite
def damaged_archives(draw: st.DrawFn) -> bytes:
    """A seed archive with one or more members or the tar's own bytes damaged."""
    files = dict(draw(st.sampled_from([docker_files(), layout_files()])))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(files)))
        how = draw(st.sampled_from(["flip", "cut", "garbage", "deep", "drop"]))
        data = files[name]
        if how == "flip":
            files[name] = _flip(
                data,
                draw(
                    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)
                ),
            )
        elif how == "cut":
            files[name] = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        elif how == "garbage":
            files[name] = data[:4] + draw(st.binary(max_size=64))  # keeps a compression magic
        elif how == "deep":
            files[name] = draw(st.sampled_from([b"[", b'{"a":'])) * draw(st.integers(60, 5000))
        else:
            files.pop(name)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    if draw(st.booleans()):  # `pier load` reads a compressed tar too: its own bytes get damaged
        raw = gzip.compress(raw, mtime=0)
    raw = _flip(raw, draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3)))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


def _files_under(top: Path) -> set[str]:
    return {str(Path(root, name).relative_to(top)) for root, _, names in os.walk(top) for name in names}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_archives())
def test_load_of_a_damaged_archive_is_a_load_or_one_line(archive: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "in.tar").write_bytes(archive)
        home = work / "home"
        stderr, stdout = io.StringIO(), io.StringIO()
        previous = os.environ.get("PIER_HOME")
        os.environ["PIER_HOME"] = str(home)
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                code = main(["load", "-i", str(work / "in.tar")])
        finally:
            if previous is None:
                os.environ.pop("PIER_HOME", None)
            else:
                os.environ["PIER_HOME"] = previous
        event(f"exit {code}")
        assert code in (0, 1)
        if code == 1:
            assert stderr.getvalue().startswith("pier: ") and stderr.getvalue().count("\n") == 1
        else:
            assert "Loaded " in stdout.getvalue()
        assert all(name == "in.tar" or name.startswith("home/") for name in _files_under(work))
        shutil.rmtree(home, ignore_errors=True)
