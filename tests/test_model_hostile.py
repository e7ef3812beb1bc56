"""Hostile model artifacts: paths in annotations and tar entries are untrusted, and so are the bytes.

Each test pushes a crafted artifact straight over HTTP (as another tool, or an attacker,
could), pulls it with `pier model pull`, and checks that the pull fails with one clear line
and that nothing was written outside the target directory, nor any file under its final
name from a layer that did not verify.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from .helpers import push_blob, push_manifest, run_pier
from .images import Blob, write_blob
from .storeview import blob_data_path

pytestmark = pytest.mark.slow  # the pier CLI as a process per step

WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
CONFIG = "application/vnd.cncf.model.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def push_artifact(
    registry, layout: Path, repository: str, layers: list[tuple[str, bytes, dict]]
) -> list[Blob]:
    """Push layers (media type, bytes, annotations) under a ModelPack config; returns the layer blobs."""
    blobs = [write_blob(layout, media_type, data) for media_type, data, _ in layers]
    config = write_blob(
        layout,
        CONFIG,
        json.dumps(
            {
                "descriptor": {},
                "modelfs": {"type": "layers", "diffIds": [b.digest for b in blobs]},
                "config": {},
            }
        ).encode(),
    )
    for blob in [config, *blobs]:
        push_blob(registry.url, repository, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [
            blob.descriptor(annotations=annotations)
            for blob, (_, _, annotations) in zip(blobs, layers, strict=True)
        ],
    }
    push_manifest(registry.url, repository, "v1", write_blob(layout, MANIFEST, json.dumps(manifest).encode()))
    return blobs


def at(path: str) -> dict:
    return {"org.cncf.model.filepath": path}


def tar_of(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data or None, link target): files, or symlinks when a target is given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, target in entries:
            entry = tarfile.TarInfo(name)
            if target:
                entry.type, entry.linkname = tarfile.SYMTYPE, target
                archive.addfile(entry)
            else:
                entry.size = len(data or b"")
                archive.addfile(entry, io.BytesIO(data or b""))
    return buffer.getvalue()


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["../escape.txt"], "'..' component"),
        (["ok.txt", "sub/../../escape.txt"], "'..' component"),
        (["/tmp/escape.txt"], "absolute path"),
        (["weights.bin", "weights.bin"], "twice"),
        (["shard", "shard/inner.bin"], "as a file and as a directory"),
        (["./weights.bin"], "'.'"),
        (["a\\..\\escape.txt"], "backslash"),
        (["line\nbreak"], "control character"),
    ],
)
def test_unsafe_paths_fail_before_anything_is_written(registry, tmp_path, paths, message) -> None:
    repository = f"hostile/paths-{abs(hash(tuple(paths))) % 10**8}"
    push_artifact(registry, tmp_path / "layout", repository, [(WEIGHT, os.urandom(64), at(p)) for p in paths])
    target = tmp_path / "work" / "out"
    pulled = run_pier(tmp_path / "home", "model", "pull", f"{registry.host}/{repository}:v1", str(target))
    assert pulled.returncode == 1 and message in pulled.stderr, pulled.stderr
    assert pulled.stderr.count("\n") == 1 and "Traceback" not in pulled.stderr
    assert files_under(tmp_path / "work") == []  # not even the target directory
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()


def test_a_symlink_in_the_target_is_never_followed_out_of_it(registry, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious\n")
    target = tmp_path / "out"
    target.mkdir()
    (target / "sub").symlink_to(outside)  # planted, say, by an earlier hostile pull of another tool
    (target / "victim.txt").symlink_to(outside / "victim.txt")
    repository = "hostile/symlinks"
    push_artifact(registry, tmp_path / "layout", repository, [(WEIGHT, b"evil", at("sub/victim.txt"))])
    pulled = run_pier(tmp_path / "home", "model", "pull", f"{registry.host}/{repository}:v1", str(target))
    assert pulled.returncode == 1 and "symlink" in pulled.stderr, pulled.stderr
    assert (outside / "victim.txt").read_text() == "precious\n" and files_under(outside) == ["victim.txt"]

    # A symlink under a file's own name is replaced by the file, never written through.
    push_artifact(
        registry, tmp_path / "layout", "hostile/symlink-name", [(WEIGHT, b"model bytes", at("victim.txt"))]
    )
    pulled = run_pier(
        tmp_path / "home", "model", "pull", f"{registry.host}/hostile/symlink-name:v1", str(target)
    )
    assert pulled.returncode == 0, pulled.stderr
    assert not (target / "victim.txt").is_symlink() and (target / "victim.txt").read_bytes() == b"model bytes"
    assert (outside / "victim.txt").read_text() == "precious\n"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("data/../../escape.txt", b"x", "")], "'..' component"),
        ([("/abs.txt", b"x", "")], "absolute path"),
        ([("data/link", None, "/etc/passwd")], "link or device"),
        ([("data/a.csv", b"1", ""), ("data/a.csv", b"2", "")], "another entry writes too"),
        ([("weights.bin", b"shadow", "")], "another entry writes too"),  # the raw layer's path
        ([("weights.bin/inner", b"x", "")], "as a file and as a directory"),  # under the raw file
        ([("data/a", b"1", ""), ("data/a/b", b"2", "")], "as a file and as a directory"),
    ],
)
def test_hostile_tar_layers_are_refused(registry, tmp_path, entries, message) -> None:
    repository = f"hostile/tar-{abs(hash(str(entries))) % 10**8}"
    layers = [
        (WEIGHT, b"real weights", at("weights.bin")),
        ("application/vnd.cncf.model.dataset.v1.tar", tar_of(entries), at("data")),
    ]
    push_artifact(registry, tmp_path / "layout", repository, layers)
    target = tmp_path / "work" / "out"
    pulled = run_pier(
        tmp_path / "home", "model", "pull", "--parallel", "1", f"{registry.host}/{repository}:v1", str(target)
    )
    assert pulled.returncode == 1 and message in pulled.stderr, pulled.stderr
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs.txt").exists()
    assert [p for p in files_under(tmp_path / "work") if p.startswith("out/data/")] == []


@pytest.mark.serial  # config.json's download must be done when the weights' fails, or its partial stays
@pytest.mark.parametrize("ranged", [False, True])
def test_a_corrupt_layer_fails_its_digest_and_leaves_no_file(registry, tmp_path, ranged) -> None:
    repository = f"hostile/corrupt-{int(ranged)}"
    weights = os.urandom(3 << 20)
    blobs = push_artifact(
        registry,
        tmp_path / "layout",
        repository,
        [(WEIGHT, weights, at("model.safetensors")), (WEIGHT, b"{}", at("config.json"))],
    )
    flipped = bytes([weights[0] ^ 0xFF]) + weights[1:]  # same size: only the digest can tell
    registry.storage.write(blob_data_path(blobs[0].digest), flipped)
    target = tmp_path / "out"
    env = {"PIER_PULL_RANGE_MIN": str(1 << 20 if ranged else 1 << 30), "PIER_PULL_RANGES": "4"}
    pulled = run_pier(
        tmp_path / "home", "model", "pull", f"{registry.host}/{repository}:v1", str(target), env=env
    )
    assert pulled.returncode == 1 and "digest mismatch" in pulled.stderr, pulled.stderr
    assert not (target / "model.safetensors").exists()
    assert [p for p in files_under(target) if p != "config.json"] == []  # no partial file left either


def test_older_annotation_keys_and_a_layer_without_a_path(registry, tmp_path) -> None:
    legacy = [
        (WEIGHT, b"old spec", {"org.cnai.model.filepath": "legacy.bin"}),
        (WEIGHT, b"titled", {"org.opencontainers.image.title": "titled.bin"}),
    ]
    push_artifact(registry, tmp_path / "layout", "hostile/legacy", legacy)
    target = tmp_path / "out"
    pulled = run_pier(tmp_path / "home", "model", "pull", f"{registry.host}/hostile/legacy:v1", str(target))
    assert pulled.returncode == 0, pulled.stderr
    assert (target / "legacy.bin").read_bytes() == b"old spec" and (
        target / "titled.bin"
    ).read_bytes() == b"titled"

    push_artifact(registry, tmp_path / "layout", "hostile/nameless", [(WEIGHT, b"anonymous", {})])
    pulled = run_pier(
        tmp_path / "home", "model", "pull", f"{registry.host}/hostile/nameless:v1", str(tmp_path / "out2")
    )
    assert pulled.returncode == 1 and "names no file path" in pulled.stderr


def test_a_tar_with_its_own_root_entry_pulls(registry, tmp_path) -> None:
    """`tar -C dir .` writes a `./` entry first: the archive's root, not a path to refuse."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        archive.addfile(root)
        entry = tarfile.TarInfo("./data/a.csv")
        entry.size = 4
        archive.addfile(entry, io.BytesIO(b"x,y\n"))
    layers = [("application/vnd.cncf.model.dataset.v1.tar", buffer.getvalue(), at("data"))]
    push_artifact(registry, tmp_path / "layout", "hostile/dot-root", layers)
    target = tmp_path / "out"
    pulled = run_pier(tmp_path / "home", "model", "pull", f"{registry.host}/hostile/dot-root:v1", str(target))
    assert pulled.returncode == 0, pulled.stderr
    assert files_under(target) == ["data", "data/a.csv"]


def test_a_status_line_with_unicode_digits_is_refused_without_a_traceback(tmp_path) -> None:
    """The raw body reader parses what a hostile server sends: "²00" is not a status."""
    import socket
    import ssl
    import threading

    from puller.transfer.raw_body import open_raw

    listener = socket.create_server(("127.0.0.1", 0))
    answers = [
        b"HTTP/1.1 \xb200 OK\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\n",
    ]

    def serve() -> None:
        for answer in answers:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(answer)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for _ in answers:
        assert open_raw(base, "/v2/x/blobs/sha256:00", {}, ssl.create_default_context(), 5.0) is None
    thread.join(5)
    listener.close()
