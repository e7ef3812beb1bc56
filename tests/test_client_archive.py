"""`pier save`/`pier load` as docker-compatible tars, read and written by skopeo, every digest checked."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from puller.store.content_store import ContentStore

from .helpers import push_blob, push_manifest, run_pier
from .images import Image, build_image, build_index
from .servers import REPO_ROOT

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, and skopeo


@pytest.fixture
def image(tmp_path) -> Image:
    return build_image(tmp_path / "layout", "v1", cmd=["cat", "/etc/motd"])


@pytest.fixture
def pulled(registry, image, tmp_path) -> tuple[Path, str]:
    """(home, reference) of ``image``, pulled into a fresh store."""
    for blob in image.blobs:
        push_blob(registry.url, "client/archive", blob)
    push_manifest(registry.url, "client/archive", "v1", image.manifest)
    home, reference = tmp_path / "home", f"{registry.host}/client/archive:v1"
    assert run_pier(home, "pull", "-q", reference).returncode == 0
    return home, reference


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        found = {}
        for member in tar:
            if member.isfile():
                data = tar.extractfile(member)
                assert data is not None  # a regular file always has data
                found[member.name] = data.read()
        return found


def rewrite(path: Path, change: dict[str, bytes | None]) -> None:
    """Replace (or with None drop) members of the tar ``path``."""
    files = members(path)
    for name, data in change.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def skopeo_archive(skopeo, image: Image, tmp_path: Path) -> Path:
    """``image`` as skopeo writes a docker archive, tagged example.org/team/app:v1."""
    archive = tmp_path / "by-skopeo.tar"
    destination = f"docker-archive:{archive}:example.org/team/app:v1"
    skopeo.run("copy", "--quiet", f"oci:{image.layout}:v1", destination)
    return archive


def test_load_of_a_missing_path_says_so(tmp_path) -> None:
    result = run_pier(tmp_path / "home", "load", str(tmp_path / "nonexistent"))
    expected = f"pier: {tmp_path}/nonexistent: no such file or directory\n"
    assert (result.returncode, result.stderr) == (1, expected)
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("hello\n")
    result = run_pier(tmp_path / "home", "load", "-i", str(not_tar))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "neither an OCI image layout nor a docker archive" in result.stderr


def test_a_saved_tar_is_a_docker_archive_and_an_oci_archive(pulled, image, skopeo, tmp_path) -> None:
    home, reference = pulled
    archive = tmp_path / "image.tar"
    saved = run_pier(home, "save", reference, "-o", str(archive))
    assert saved.returncode == 0, saved.stderr
    files = members(archive)
    [item] = json.loads(files["manifest.json"])
    assert item["RepoTags"] == [reference]
    assert item["Config"] == f"blobs/sha256/{image.config.digest.split(':')[1]}"
    assert item["Layers"] == [f"blobs/sha256/{b.digest.split(':')[1]}" for b in image.layers]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    inspected = skopeo.json("inspect", f"docker-archive:{archive}")
    assert inspected["Layers"] == list(image.diff_ids)  # docker-archive names layers by their diff_ids
    raw = skopeo.json("inspect", "--raw", f"docker-archive:{archive}")
    assert raw["config"]["digest"] == image.config.digest
    copied = tmp_path / "copied"
    # Picked by its RepoTags entry, as `docker load` names it.
    skopeo.run("copy", "--quiet", f"docker-archive:{archive}:{reference}", f"oci:{copied}:v1")
    index = json.loads((copied / "index.json").read_text())
    manifest = json.loads((copied / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((copied / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)  # skopeo rewrote the config, not the layers
    oci = tmp_path / "from-oci-archive"
    skopeo.run("copy", "--quiet", "--preserve-digests", f"oci-archive:{archive}:v1", f"oci:{oci}:v1")
    assert json.loads((oci / "index.json").read_text())["manifests"][0]["digest"] == image.digest

    other = tmp_path / "other"
    loaded = run_pier(other, "load", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == f"Loaded {reference} {image.digest}\n"  # the OCI index inside: same digest
    ran = run_pier(other, "run", "--rm", reference)
    assert ran.returncode == 0 and ran.stdout == "built by pier tests\n", ran.stderr


def test_load_a_docker_archive_written_by_skopeo(image, skopeo, tmp_path) -> None:
    archive = skopeo_archive(skopeo, image, tmp_path)
    assert "index.json" not in members(archive)  # docker's format only: loaded from manifest.json
    home = tmp_path / "home"
    loaded = run_pier(home, "load", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("Loaded example.org/team/app:v1 sha256:")
    assert ContentStore(home).read(image.config.digest) == image.config.read()
    ran = run_pier(home, "run", "--rm", "example.org/team/app:v1")
    assert ran.returncode == 0 and ran.stdout == "built by pier tests\n", ran.stderr
    again = run_pier(tmp_path / "again", "load", str(archive))
    assert again.stdout == loaded.stdout  # the manifest pier writes for it is always the same


def test_a_tampered_docker_archive_is_refused(image, skopeo, tmp_path) -> None:
    archive = skopeo_archive(skopeo, image, tmp_path)
    [item] = json.loads(members(archive)["manifest.json"])
    layer = item["Layers"][-1]
    data = bytearray(members(archive)[layer])
    data[len(data) // 2] ^= 0x01
    rewrite(archive, {layer: bytes(data)})
    home = tmp_path / "home"
    refused = run_pier(home, "load", str(archive))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"layer {layer} is not the config's" in refused.stderr
    assert ContentStore(home).get_ref("example.org/team/app", "v1") is None

    rewrite(archive, {"manifest.json": json.dumps([{**item, "Config": "../../../etc/passwd"}]).encode()})
    outside = run_pier(home, "load", str(archive))
    assert outside.returncode == 1 and "is missing from the archive" in outside.stderr


def test_save_format_choices(pulled, tmp_path) -> None:
    home, reference = pulled
    directory = tmp_path / "as-dir"
    assert run_pier(home, "save", reference, "-o", str(directory)).returncode == 0
    assert (directory / "index.json").is_file()  # no .tar: an OCI layout directory, as before
    oci = tmp_path / "oci.tar"
    assert run_pier(home, "save", "--format", "oci-archive", reference, "-o", str(oci)).returncode == 0
    assert "manifest.json" not in members(oci) and "index.json" in members(oci)
    named = tmp_path / "archive.bin"
    assert run_pier(home, "save", "--format", "docker-archive", reference, "-o", str(named)).returncode == 0
    assert "manifest.json" in members(named)


def test_an_index_saved_to_a_tar_keeps_every_platform(skopeo, tmp_path) -> None:
    index = build_index(tmp_path / "layout", "v1")
    home = tmp_path / "home"
    assert (
        run_pier(home, "load", str(tmp_path / "layout"), "--name", "example.org/team/multi").returncode == 0
    )
    archive = tmp_path / "multi.tar"
    saved = run_pier(
        home, "save", "--platform", "linux/arm64", "example.org/team/multi:v1", "-o", str(archive)
    )
    assert saved.returncode == 0, saved.stderr
    [item] = json.loads(members(archive)["manifest.json"])  # docker's side: one platform's image
    assert item["Config"] == f"blobs/sha256/{index.image('arm64').config.digest.split(':')[1]}"
    oci = tmp_path / "oci"
    skopeo.run("copy", "--quiet", "--all", "--preserve-digests", f"oci-archive:{archive}:v1", f"oci:{oci}:v1")
    assert json.loads((oci / "index.json").read_text())["manifests"][0]["digest"] == index.digest

    compressed = tmp_path / "multi.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=1))
    other = tmp_path / "other"
    loaded = run_pier(other, "load", str(compressed))
    assert loaded.stdout == f"Loaded example.org/team/multi:v1 {index.digest}\n", loaded.stderr
    assert all(ContentStore(other).has(blob.digest) for blob in index.blobs)


def test_save_to_stdout_and_load_from_stdin(pulled, image, tmp_path) -> None:
    """`pier save IMG > x.tar` and `pier load < x.tar`, as docker users type them."""
    home, reference = pulled
    archive = tmp_path / "piped.tar"
    with archive.open("wb") as out:
        saved = subprocess.run(
            [sys.executable, "-m", "puller", "save", reference],
            stdout=out,
            stderr=subprocess.PIPE,
            env={**os.environ, "PIER_HOME": str(home)},
            cwd=REPO_ROOT,
            timeout=120,
        )
    assert saved.returncode == 0, saved.stderr
    assert json.loads(members(archive)["manifest.json"])[0]["RepoTags"] == [reference]
    other = tmp_path / "other"
    with archive.open("rb") as stream:
        loaded = subprocess.run(
            [sys.executable, "-m", "puller", "load"],
            stdin=stream,
            capture_output=True,
            text=True,
            env={**os.environ, "PIER_HOME": str(other)},
            cwd=REPO_ROOT,
            timeout=120,
        )
    assert loaded.stdout == f"Loaded {reference} {image.digest}\n", loaded.stderr
    assert not [p for p in other.iterdir() if p.name.startswith(".load-")]  # the spooled copy is gone


def test_an_extracted_docker_archive_cannot_name_files_outside_it(image, skopeo, tmp_path) -> None:
    archive = skopeo_archive(skopeo, image, tmp_path)
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    [item] = json.loads((extracted / "manifest.json").read_text())
    outside = tmp_path / "outside.json"
    outside.write_bytes((extracted / item["Config"]).read_bytes())  # a valid config, outside the folder
    (extracted / item["Config"]).unlink()
    item["Config"] = f"../{outside.name}"
    (extracted / "manifest.json").write_text(json.dumps([item]))
    home = tmp_path / "home"
    refused = run_pier(home, "load", str(extracted))
    assert refused.returncode == 1 and "is missing from the archive" in refused.stderr, refused.stderr
    assert ContentStore(home).get_ref("example.org/team/app", "v1") is None
    item["Config"] = str(outside)  # an absolute name: below the folder too
    (extracted / "manifest.json").write_text(json.dumps([item]))
    assert run_pier(home, "load", str(extracted)).returncode == 1


def test_load_a_legacy_docker_save_tar_with_a_linked_layer(image, skopeo, tmp_path) -> None:
    """docker before 25: ``<id>/layer.tar`` per layer, a repeated layer as a symlink to the first."""
    files = members(skopeo_archive(skopeo, image, tmp_path))
    [item] = json.loads(files["manifest.json"])
    config = json.loads(files[item["Config"]])
    config["rootfs"]["diff_ids"].append(config["rootfs"]["diff_ids"][0])  # the base layer again
    config_body = json.dumps(config).encode()
    config_name = f"{hashlib.sha256(config_body).hexdigest()}.json"
    layers = [f"{'abcd'[i] * 64}/layer.tar" for i in range(len(item["Layers"]) + 1)]
    legacy = tmp_path / "legacy.tar"
    with tarfile.open(legacy, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, source in zip(layers, item["Layers"], strict=False):
            add(name, files[source])
        link = tarfile.TarInfo(layers[-1])
        link.type, link.linkname = tarfile.SYMTYPE, f"../{layers[0]}"
        tar.addfile(link)
        add(config_name, config_body)
        add(
            "manifest.json",
            json.dumps([{"Config": config_name, "RepoTags": ["app:v1"], "Layers": layers}]).encode(),
        )
        add("repositories", json.dumps({"app": {"v1": "d" * 64}}).encode())
    home = tmp_path / "home"
    loaded = run_pier(home, "load", "-i", str(legacy))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("Loaded app:v1 sha256:")  # docker.io/library/app, shown as docker does
    ran = run_pier(home, "run", "--rm", "app:v1")
    assert ran.returncode == 0 and ran.stdout == "built by pier tests\n", ran.stderr
