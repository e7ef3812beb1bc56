"""A real client against pier: skopeo (containers/image) pushes, pulls, inspects and deletes.

Images come from ``tests/images.py`` as OCI layouts. Copies use ``--preserve-digests``,
so skopeo neither rewrites a manifest nor recompresses a layer: a correct round trip
must give back the very same bytes, and the tests compare every byte. skopeo is a required tool:
if it is missing these tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    ImageIndex,
    build_image,
    build_index,
    layout_blobs,
    random_files,
    resolve_tag,
    sample_layers,
    tag_layout,
)
from .layouts import assert_same_layout_content
from .servers import PierServer
from .skopeo import COPY_FLAGS, TIMEOUT, Skopeo
from .storeview import Storage

# slow: skopeo, a process per step
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]


@pytest.fixture
def http(registry: PierServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        yield client


def ref(server: PierServer, repo: str, reference: str) -> str:
    separator = "@" if ":" in reference else ":"
    return f"docker://{server.host}/{repo}{separator}{reference}"


def assert_registry_serves(
    http: httpx.Client, repo: str, reference: str, body: bytes, media_type: str
) -> None:
    response = http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
    assert response.status_code == 200, response.text
    assert response.content == body
    assert response.headers["content-type"] == media_type


def assert_registry_serves_image(http: httpx.Client, repo: str, reference: str, image: Image) -> None:
    assert_registry_serves(http, repo, reference, image.manifest.read(), OCI_MANIFEST)
    for blob in image.blobs:
        response = http.get(f"/v2/{repo}/blobs/{blob.digest}")
        assert response.status_code == 200, f"{blob.digest}: {response.status_code}"
        assert response.content == blob.read(), f"{blob.digest} is served with other bytes"


def test_copy_image_round_trip_is_byte_identical(
    skopeo: Skopeo, http: httpx.Client, repo: str, tmp_path: Path
) -> None:
    # An empty file, a small one and one of several MiB, then a whiteout layer on top.
    image = build_image(tmp_path / "src", "v1", layers=sample_layers(sizes=(0, 1000, 6 * 1024 * 1024)))
    assert len(image.layers) == 3

    skopeo.push(image.layout, "v1", repo)
    assert_registry_serves_image(http, repo, "v1", image)
    assert_registry_serves_image(http, repo, image.digest, image)

    skopeo.pull(repo, "v1", tmp_path / "out")
    assert_same_layout_content(image.layout, tmp_path / "out", "v1")


def test_copy_all_of_an_index_round_trip_is_byte_identical(
    skopeo: Skopeo, http: httpx.Client, repo: str, tmp_path: Path
) -> None:
    index = build_index(tmp_path / "src", "multi", platforms=[("linux", "amd64"), ("linux", "arm64")])
    assert len({image.digest for image in index.images}) == 2

    skopeo.push(index.layout, "multi", repo, "--all")
    assert_registry_serves(http, repo, "multi", index.index.read(), OCI_INDEX)
    for image in index.images:
        assert_registry_serves_image(http, repo, image.digest, image)

    skopeo.pull(repo, "multi", tmp_path / "out", "--all")
    assert_same_layout_content(index.layout, tmp_path / "out", "multi")


def test_copy_of_an_index_without_all_takes_only_the_requested_platform(
    skopeo: Skopeo, repo: str, tmp_path: Path
) -> None:
    index = build_index(tmp_path / "src", "multi")
    skopeo.push(index.layout, "multi", repo, "--all")

    arm64 = index.image("arm64")
    source, destination = ref(skopeo.registry, repo, "multi"), f"oci:{tmp_path / 'out'}:arm64"
    skopeo.run("copy", *COPY_FLAGS, "--src-tls-verify=false", "--override-arch", "arm64", source, destination)
    assert resolve_tag(tmp_path / "out", "arm64")["digest"] == arm64.digest
    pulled = layout_blobs(tmp_path / "out")
    assert sorted(pulled) == sorted({arm64.digest, *(b.digest for b in arm64.blobs)})
    assert all(pulled[b.digest] == b.read() for b in arm64.blobs)


def test_inspect_reports_the_pushed_image(skopeo: Skopeo, repo: str, tmp_path: Path) -> None:
    image = build_image(tmp_path / "src", "v1")
    skopeo.push(image.layout, "v1", repo)

    for reference in ("v1", image.digest):
        info = skopeo.json("inspect", "--tls-verify=false", ref(skopeo.registry, repo, reference))
        assert info["Digest"] == image.digest
        assert info["Layers"] == [layer.digest for layer in image.layers]
        assert (info["Os"], info["Architecture"]) == (image.os, image.architecture)
        assert info["RepoTags"] == ["v1"]
        assert info["Name"] == f"{skopeo.registry.host}/{repo}"

    raw = skopeo.run("inspect", "--raw", "--tls-verify=false", ref(skopeo.registry, repo, "v1")).stdout
    assert raw == image.manifest.read()
    config = skopeo.run(
        "inspect", "--raw", "--config", "--tls-verify=false", ref(skopeo.registry, repo, "v1")
    )
    assert config.stdout == image.config.read()


def test_inspect_resolves_an_index_to_each_platform(skopeo: Skopeo, repo: str, tmp_path: Path) -> None:
    index: ImageIndex = build_index(tmp_path / "src", "multi")
    skopeo.push(index.layout, "multi", repo, "--all")

    raw = skopeo.run("inspect", "--raw", "--tls-verify=false", ref(skopeo.registry, repo, "multi")).stdout
    assert raw == index.index.read()
    for image in index.images:
        platform = ["--override-arch", image.architecture, "--override-os", image.os]
        info = skopeo.json(
            "inspect", *platform, "--no-tags", "--tls-verify=false", ref(skopeo.registry, repo, "multi")
        )
        assert info["Digest"] == index.digest  # skopeo names what the reference points to
        assert info["Architecture"] == image.architecture
        assert info["Layers"] == [layer.digest for layer in image.layers]


def test_list_tags_lists_every_pushed_tag(skopeo: Skopeo, repo: str, tmp_path: Path) -> None:
    first = build_image(tmp_path / "src", "v1")
    build_image(tmp_path / "src", "v1.0.1", layers=[{"data/a": b"a"}])
    build_image(tmp_path / "src", "latest", layers=[{"data/b": b"b"}])
    for tag in ("v1", "v1.0.1", "latest"):
        skopeo.push(first.layout, tag, repo)

    listed = skopeo.json("list-tags", "--tls-verify=false", f"docker://{skopeo.registry.host}/{repo}")
    assert listed["Repository"] == f"{skopeo.registry.host}/{repo}"
    assert sorted(listed["Tags"]) == ["latest", "v1", "v1.0.1"]


def test_list_tags_of_an_unknown_repository_fails(skopeo: Skopeo, repo: str) -> None:
    result = skopeo.run(
        "list-tags", "--tls-verify=false", f"docker://{skopeo.registry.host}/{repo}", check=False
    )
    assert result.returncode != 0
    assert b"404" in result.stderr


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_delete_removes_the_manifest(
    skopeo: Skopeo, http: httpx.Client, repo: str, tmp_path: Path, by: str
) -> None:
    doomed = build_image(tmp_path / "src", "v1")
    tag_layout(doomed.layout, "v1-alias", doomed.manifest)  # a second tag of the same manifest
    kept = build_image(tmp_path / "other", "v2", layers=[{"data/kept": b"kept\n"}])
    for tag in ("v1", "v1-alias"):
        skopeo.push(doomed.layout, tag, repo)
    skopeo.push(kept.layout, "v2", repo)
    assert http.get(f"/v2/{repo}/manifests/v1-alias").status_code == 200

    skopeo.run(
        "delete", "--tls-verify=false", ref(skopeo.registry, repo, "v1" if by == "tag" else doomed.digest)
    )

    # skopeo deletes by digest, so no tag may resolve to the deleted manifest any more.
    for reference in ("v1", "v1-alias", doomed.digest):
        response = http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert response.status_code == 404, f"{reference}: {response.status_code}"
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert_registry_serves_image(http, repo, "v2", kept)
    listed = skopeo.json("list-tags", "--tls-verify=false", f"docker://{skopeo.registry.host}/{repo}")
    assert listed["Tags"] == ["v2"]
    missing = skopeo.run("inspect", "--tls-verify=false", ref(skopeo.registry, repo, "v1"), check=False)
    assert missing.returncode != 0
    assert b"manifest unknown" in missing.stderr.lower()


def _stored_blobs(storage: Storage) -> dict[str, str]:
    """digest -> data path, read from pier's layout ``blobs/<alg>/<hex[:2]>/<hex>/data``."""
    found = {}
    for path in storage.files("blobs"):
        parts = path.split("/")
        if len(parts) == 5 and parts[4] == "data":
            algorithm, prefix, hex_ = parts[1:4]
            assert hex_.startswith(prefix), path
            found[f"{algorithm}:{hex_}"] = path
    return found


def test_a_base_layer_shared_by_two_repositories_is_stored_once(
    skopeo: Skopeo, start_registry, repo: str, tmp_path: Path
) -> None:
    server: PierServer = start_registry()  # empty storage: everything in it comes from this test
    first = build_image(tmp_path / "first", "v1")
    second = build_image(tmp_path / "second", "v1", layers=[random_files([4096], prefix="other/f")])
    base = first.layers[0]
    assert second.layers[0].digest == base.digest
    assert {b.digest for b in first.layers[1:]}.isdisjoint(b.digest for b in second.layers[1:])

    other_repo = f"{repo}-other"
    skopeo.push(first.layout, "v1", repo, server=server)
    skopeo.push(second.layout, "v1", other_repo, server=server)

    stored = _stored_blobs(server.storage)
    expected = {image.digest for image in (first, second)} | {b.digest for b in (*first.blobs, *second.blobs)}
    assert sorted(stored) == sorted(expected), "blob storage holds exactly the distinct digests"
    for digest, data in stored.items():
        algorithm, hex_ = digest.split(":")
        assert hashlib.new(algorithm, server.storage.read(data)).hexdigest() == hex_, (
            f"{data} is not {digest}"
        )
    same_size = [p for p, size in server.storage.files().items() if size == base.size]
    copies = [p for p in same_size if server.storage.read(p) == base.read()]
    assert copies == [stored[base.digest]], "the base layer's bytes exist once in the whole storage"
    for name in (repo, other_repo):
        link = f"repositories/{name}/_layers/sha256/{base.digest.split(':')[1]}/link"
        assert server.storage.exists(link), f"{name} does not link the shared base layer"

    # Each repository serves the shared layer: pulling the second image back gives it whole.
    skopeo.pull(other_repo, "v1", tmp_path / "out", server=server)
    assert_same_layout_content(second.layout, tmp_path / "out", "v1")


def test_a_pulled_image_unpacks_to_the_filesystem_it_was_built_from(
    skopeo: Skopeo, repo: str, tmp_path: Path
) -> None:
    """umoci, a second real client, unpacks what came back through pier: layers, whiteouts, config."""
    umoci = shutil.which("umoci") or pytest.fail("umoci is not installed (Debian: apt-get install umoci)")
    kept = random_files([3000], prefix="data/kept")
    image = build_image(
        tmp_path / "src",
        "v1",
        layers=[{**kept, "data/gone": b"deleted above"}, {"data/gone": None}],
        cmd=["/bin/ls"],
    )
    skopeo.push(image.layout, "v1", repo)
    skopeo.pull(repo, "v1", tmp_path / "out")

    bundle = tmp_path / "bundle"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    argv = [umoci, "unpack", *rootless, "--image", f"{tmp_path / 'out'}:v1", str(bundle)]
    result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")

    rootfs = bundle / "rootfs"
    for path, content in kept.items():
        assert (rootfs / path).read_bytes() == content
    assert not (rootfs / "data" / "gone").exists(), "the whiteout of the top layer was not applied"
    assert not (rootfs / "data" / ".wh.gone").exists()
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    ran = subprocess.run(
        [rootfs / "bin" / "busybox", "echo", "alive"], capture_output=True, timeout=30, check=True
    )
    assert ran.stdout == b"alive\n"
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ["/bin/ls"]
    assert any(variable.startswith("PATH=") for variable in process["env"])
