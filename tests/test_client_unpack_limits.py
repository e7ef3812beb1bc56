"""Bounded unpack: gzip bombs, entry floods and full disks stop at a limit, sparse files stay sparse.

Each failure must be one line naming the limit and how to raise it, and must leave no
partial rootfs behind. Images are made here byte by byte and loaded into a local store;
``pier unpack`` runs as its own process, as a user would run it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from puller.errors import PierError
from puller.reference import parse_reference
from puller.store.content_store import ContentStore
from puller.store.image import load_image, local_digest
from puller.store.platforms import Platform
from puller.unpack.layers import apply_layer
from puller.unpack.limits import UnpackBudget, UnpackLimitError, UnpackLimits
from puller.unpack.rootfs import image_layers

from .helpers import free_bytes, run_pier, tmpfs
from .images import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    gzip_bytes,
    layer_tar,
    sha256,
)
from .layers import entry, make_tar

MiB, GiB, GB = 1 << 20, 1 << 30, 10**9
TAR = "application/vnd.oci.image.layer.v1.tar"


def store_image(home: Path, name: str, layers: list[bytes]) -> str:
    """``local/NAME:v1`` in the local store at ``home``: an image of these gzip layer blobs.

    The config's diff_ids are stand-ins (digests of the compressed blobs): unpacking does
    not read them, and a bomb's real one would cost seconds to compute.
    """
    store = ContentStore(home)

    def put(media_type: str, data: bytes) -> dict:
        digest = sha256(data)
        store.put(digest, data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    descriptors = [put(OCI_LAYER_GZIP, data) for data in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put(OCI_CONFIG, json.dumps(config).encode()),
        "layers": descriptors,
    }
    reference = parse_reference(f"local/{name}:v1")
    store.set_ref(reference.name, "v1", put(OCI_MANIFEST, json.dumps(manifest).encode())["digest"])
    return f"local/{name}:v1"


def gzip_bomb(total: int) -> bytes:
    """A gzip layer holding one file of ``total`` zero bytes, about 1000 times smaller than that.

    Made of gzip members of 16 MiB of zeros each (a valid multi-member gzip stream), so
    building a 2 GiB bomb costs milliseconds instead of compressing 2 GiB.
    """
    assert total % (16 * MiB) == 0
    info = tarfile.TarInfo("zeros")
    info.size, info.mtime = total, 1_700_000_000
    chunk = gzip.compress(bytes(16 * MiB), compresslevel=9, mtime=0)
    return (
        gzip.compress(info.tobuf(tarfile.GNU_FORMAT), mtime=0)
        + chunk * (total // (16 * MiB))
        + gzip.compress(bytes(1024), mtime=0)
    )


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing ``pier`` prints, checked to be just that."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


def test_a_gzip_bomb_stops_at_the_layer_limit_fast_and_leaves_nothing(tmp_path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    bomb = gzip_bomb(2 * GiB)
    assert len(bomb) < 10 * 1000 * 1000  # 10 MB of gzip, 2 GiB of tar
    reference = store_image(home, "bomb", [bomb])
    start = time.monotonic()
    result = run_pier(
        home, "unpack", reference, str(out / "rootfs"), env={"PIER_UNPACK_MAX_LAYER_BYTES": "64MiB"}
    )
    elapsed = time.monotonic() - start
    line = one_line_failure(result)
    assert "per layer" in line and "67.1MB" in line and "PIER_UNPACK_MAX_LAYER_BYTES" in line, line
    assert elapsed < 5, f"took {elapsed:.1f} s to stop at 64 MiB"
    assert os.listdir(out) == []  # no rootfs, no temporary tree


@pytest.mark.parametrize(
    ("env", "layers", "named"),
    [
        ({"PIER_UNPACK_MAX_BYTES": "3MB"}, [{"a": bytes(2 * 10**6)}, {"b": bytes(2 * 10**6)}], "per image"),
        (
            {"PIER_UNPACK_MAX_LAYER_ENTRIES": "50"},
            [{f"f{k}": b"x" for k in range(60)}],
            "50 entries per layer",
        ),
        (
            {"PIER_UNPACK_MAX_ENTRIES": "80"},
            [{f"a{k}": b"x" for k in range(45)}, {f"b{k}": b"x" for k in range(45)}],
            "80 entries per image",
        ),
    ],
    ids=["image-bytes", "layer-entries", "image-entries"],
)
def test_each_limit_stops_the_unpack_with_its_name(tmp_path, env, layers, named) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    reference = store_image(home, "many", [gzip_bytes(layer_tar(files)) for files in layers])
    line = one_line_failure(run_pier(home, "unpack", reference, str(out / "rootfs"), env=env))
    assert named in line and next(iter(env)) in line, line
    assert os.listdir(out) == []
    fine = run_pier(home, "unpack", reference, str(out / "rootfs"))  # the defaults let it through
    assert fine.returncode == 0, fine.stderr


def test_an_invalid_limit_setting_is_one_line(tmp_path) -> None:
    home = tmp_path / "home"
    reference = store_image(home, "small", [gzip_bytes(layer_tar({"a": b"x"}))])
    line = one_line_failure(
        run_pier(home, "unpack", reference, str(tmp_path / "rootfs"), env={"PIER_UNPACK_MAX_BYTES": "lots"})
    )
    assert "PIER_UNPACK_MAX_BYTES" in line and "lots" in line
    assert not (tmp_path / "rootfs").exists()


def test_a_zstd_bomb_stops_at_the_limit_too(tmp_path, monkeypatch) -> None:
    import zstandard

    info = tarfile.TarInfo("zeros")
    info.size = 1 * GiB
    compressor = zstandard.ZstdCompressor().compressobj()
    chunks = [compressor.compress(info.tobuf(tarfile.GNU_FORMAT))]
    chunks += [compressor.compress(bytes(16 * MiB)) for _ in range(64)]
    bomb = b"".join(chunks) + compressor.compress(bytes(1024)) + compressor.flush()
    assert len(bomb) < 1 * MiB
    monkeypatch.setenv("PIER_UNPACK_MAX_LAYER_BYTES", "32MiB")
    start = time.monotonic()
    with pytest.raises(UnpackLimitError, match=r"33\.6MB of uncompressed data per layer"):
        apply_layer(
            tmp_path / "rootfs", io.BytesIO(bomb), "application/vnd.oci.image.layer.v1.tar+zstd", "sha256:z"
        )
    assert time.monotonic() - start < 3


def test_the_layer_store_keeps_no_half_layer_when_a_limit_stops_it(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    reference = store_image(home, "cached", [gzip_bomb(256 * MiB)])
    store = ContentStore(home)
    image = load_image(store, _digest(store, reference), Platform.host())
    monkeypatch.setenv("PIER_UNPACK_MAX_LAYER_BYTES", "16MiB")
    with pytest.raises(PierError, match="PIER_UNPACK_MAX_LAYER_BYTES"):
        image_layers(store, image)
    assert [name for name in os.listdir(store.root / "layers") if name != ".locks"] == []


def test_pier_run_stops_at_the_limit_in_one_line(tmp_path) -> None:
    home = tmp_path / "home"
    reference = store_image(home, "bomb", [gzip_bomb(256 * MiB)])
    result = run_pier(home, "run", "--rm", reference, "true", env={"PIER_UNPACK_MAX_LAYER_BYTES": "64MiB"})
    assert "PIER_UNPACK_MAX_LAYER_BYTES" in one_line_failure(result)
    assert [name for name in os.listdir(home / "layers") if name != ".locks"] == []


def _digest(store: ContentStore, reference: str) -> str:
    digest = local_digest(store, parse_reference(reference))
    assert digest is not None
    return digest


def test_a_huge_extended_header_is_refused_before_it_is_read_into_memory(tmp_path) -> None:
    info = entry("file")
    info.pax_headers = {"comment": "x" * (20 * MiB)}
    with pytest.raises(PierError, match="tar header"):
        apply_layer(tmp_path / "rootfs", make_tar([(info, b"data")]), TAR, "sha256:huge-header")
    assert not (tmp_path / "rootfs" / "file").exists()


@pytest.mark.parametrize("form", ["gnu", "posix-0.0", "posix-0.1", "posix-1.0"])
def test_sparse_members_stay_sparse(tmp_path, form) -> None:
    source = tmp_path / "source"
    source.mkdir()
    sparse = source / "disk.img"
    regions = [40960, 512 * MiB, GiB - 2048]
    with sparse.open("wb") as f:
        f.truncate(GiB)
        for offset in regions:
            f.seek(offset)
            f.write(b"A" * 1200)  # 3.6 KB of data in 1 GiB
    archive = tmp_path / "layer.tar"
    option = ["--format=gnu"] if form == "gnu" else ["--format=posix", f"--sparse-version={form[6:]}"]
    subprocess.run(
        ["tar", "--sparse", *option, "-cf", str(archive), "-C", str(source), "disk.img"], check=True
    )
    assert archive.stat().st_size < 64 * 1024
    layer = io.BytesIO(gzip.compress(archive.read_bytes()))
    apply_layer(tmp_path / "rootfs", layer, OCI_LAYER_GZIP, "sha256:sparse")
    unpacked = tmp_path / "rootfs" / "disk.img"
    info = unpacked.stat()
    assert info.st_size == GiB
    assert info.st_blocks * 512 < 1 * MiB, f"{info.st_blocks * 512} bytes allocated"
    with unpacked.open("rb") as f:
        for offset in regions:
            f.seek(offset - 8)
            assert f.read(1216) == bytes(8) + b"A" * 1200 + bytes(8)
        f.seek(100 * MiB)
        assert f.read(4096) == bytes(4096)


def test_a_sparse_map_beyond_the_file_is_refused(tmp_path) -> None:
    info = entry("liar")
    info.pax_headers = {"GNU.sparse.map": f"0,512,{GiB},512", "GNU.sparse.size": "1024"}
    with pytest.raises(PierError, match="sparse map"):
        apply_layer(tmp_path / "rootfs", make_tar([(info, b"y" * 1024)]), TAR, "sha256:liar")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """16 MiB of space."""
    with tmpfs(tmp_path / "small", "size=16m") as mount:
        yield mount


@pytest.mark.parametrize("into", ["new", "mount-point"])
def test_an_image_larger_than_the_free_space_stops_before_the_disk_fills(tmp_path, small_disk, into) -> None:
    home = tmp_path / "home"
    files = {f"data/{k}": bytes(3 * 10**6) for k in range(8)}  # 24 MB: more than the 16 MiB disk
    reference = store_image(home, "big", [gzip_bytes(layer_tar(files))])
    empty = free_bytes(small_disk)
    target = small_disk / "rootfs" if into == "new" else small_disk
    line = one_line_failure(
        run_pier(home, "unpack", reference, str(target), env={"PIER_UNPACK_MIN_FREE": "1MB"})
    )
    assert "not enough free space" in line and "PIER_UNPACK_MIN_FREE" in line, line
    assert os.listdir(small_disk) == []
    assert free_bytes(small_disk) == empty
    small = store_image(home, "fits", [gzip_bytes(layer_tar(dict(list(files.items())[:3])))])
    fits = run_pier(home, "unpack", small, str(target))  # the default margin: 5% of the disk
    assert fits.returncode == 0, fits.stderr
    assert (target / "data" / "2").stat().st_size == 3 * 10**6


def gnu_sparse_flood(extension_blocks: int) -> bytes:
    """A GNU sparse member whose map goes on for ``extension_blocks`` blocks of 21 regions each.

    tarfile collects the whole map in memory before the member is returned: the header
    cap must stop it (GNU tar writes one extension block per 21 regions of a real file).
    """
    header = bytearray(tarfile.TarInfo("flood").tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[482] = 1  # isextended: another block of regions follows
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    region = b"%011o\0%011o\0" % (1, 1)
    block = region * 21 + bytes(504 - 24 * 21) + b"\x01" + bytes(7)
    return bytes(header) + block * extension_blocks + bytes(1024)


def test_a_sparse_map_flood_is_refused_at_the_header_cap(tmp_path) -> None:
    layer = io.BytesIO(gzip.compress(gnu_sparse_flood(40_000), mtime=0))  # 20 MB of map
    with pytest.raises(PierError, match="tar header"):
        apply_layer(tmp_path / "rootfs", layer, OCI_LAYER_GZIP, "sha256:flood")
    assert os.listdir(tmp_path / "rootfs") == []


def test_an_image_of_more_files_than_free_inodes_stops_before_they_run_out(tmp_path) -> None:
    home = tmp_path / "home"
    reference = store_image(home, "files", [gzip_bytes(layer_tar({f"f/{k}": b"" for k in range(300)}))])
    with tmpfs(tmp_path / "few", "size=16m,nr_inodes=200") as mount:
        empty = os.statvfs(mount).f_favail
        line = one_line_failure(run_pier(home, "unpack", reference, str(mount / "rootfs")))
        assert "not enough free inodes" in line, line
        assert os.listdir(mount) == [] and os.statvfs(mount).f_favail == empty


def test_the_defaults_let_a_30_GB_image_through(tmp_path) -> None:
    # A CUDA/PyTorch image as they come: ~30 GB in a few layers, the largest ~12 GB, ~400k files.
    budget = UnpackBudget(UnpackLimits(), tmp_path)
    for number, (size, files) in enumerate(
        [(12 * GB, 150_000), (9 * GB, 120_000), (6 * GB, 80_000), (3 * GB, 50_000)]
    ):
        budget.start_layer(f"layer-{number}")
        for _ in range(size // MiB):
            budget.add_bytes(MiB)
        for _ in range(files):
            budget.add_entry()
    budget.start_layer("too-big")
    with pytest.raises(UnpackLimitError, match="PIER_UNPACK_MAX_LAYER_BYTES"):
        budget.add_bytes(UnpackLimits().max_layer_bytes + 1)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("64MB", 64 * 10**6),
        ("64 MiB", 64 * MiB),
        ("2gib", 2 * GiB),
        ("256GB", 256 * GB),
        ("64M", 64 * MiB),  # a bare letter is binary, as in docker run --memory
        ("0", 0),
    ],
)
def test_sizes_are_read_in_both_unit_systems(text, size) -> None:
    assert UnpackLimits.from_env({"PIER_UNPACK_MAX_BYTES": text}).max_bytes == size


@pytest.mark.parametrize("text", ["lots", "64Q", "1.5GB", "-1", "64 MB extra", "\u0663MB", "\u00b2MB"])
def test_a_size_that_is_not_one_is_refused(text) -> None:
    with pytest.raises(PierError, match="PIER_UNPACK_MAX_BYTES"):
        UnpackLimits.from_env({"PIER_UNPACK_MAX_BYTES": text})


@pytest.mark.parametrize("text", ["many", "-5", "1e6", "10MB", "\u0663"])
def test_a_count_that_is_not_one_is_refused(text) -> None:
    with pytest.raises(PierError, match="PIER_UNPACK_MAX_LAYER_ENTRIES"):
        UnpackLimits.from_env({"PIER_UNPACK_MAX_LAYER_ENTRIES": text})
