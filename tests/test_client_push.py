"""`pier push` and `pier copy` against real registries: pier itself and Debian's docker-registry."""

from __future__ import annotations

import httpx
import pytest

from puller.store.content_store import ContentStore

from .helpers import TamperingProxy, push_index, run_pier
from .images import ImageIndex, build_index
from .storeview import blob_data_path

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, and distribution


@pytest.fixture
def index(tmp_path) -> ImageIndex:
    return build_index(tmp_path / "layout", "v1")


def manifest_digest(base: str, repo: str, reference: str) -> str | None:
    response = httpx.head(
        f"{base}/v2/{repo}/manifests/{reference}",
        headers={
            "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
        },
    )
    return response.headers.get("docker-content-digest") if response.status_code == 200 else None


def test_push_mounts_blobs_from_the_repository_it_pulled_from(registry, index, tmp_path) -> None:
    push_index(registry.url, "client/push-source", index)
    home = tmp_path / "home"
    source = f"{registry.host}/client/push-source:v1"
    assert run_pier(home, "pull", "--platform", "linux/amd64", source).returncode == 0
    target = f"{registry.host}/client/push-target:v2"
    assert run_pier(home, "tag", source, target).returncode == 0

    pushed = run_pier(home, "push", "--platform", "linux/amd64", target)
    assert pushed.returncode == 0, pushed.stderr
    amd = index.image("amd64")
    # Only the amd64 image is local: that image is pushed in the index's place, and said so.
    assert "holds only the linux/amd64 image" in pushed.stderr
    assert f"Digest: {amd.digest}" in pushed.stdout
    for blob in amd.blobs:
        assert f"{blob.digest[7:19]}: mounted" in pushed.stdout
    assert manifest_digest(registry.url, "client/push-target", "v2") == amd.digest

    again = run_pier(home, "push", target)
    assert again.returncode == 0, again.stderr
    assert all(f"{blob.digest[7:19]}: exists" in again.stdout for blob in amd.blobs)
    assert "uploading" not in again.stdout and "mounted" not in again.stdout


def test_push_a_whole_index_to_the_reference_registry_and_pull_it_back(
    registry, distribution, index, tmp_path
) -> None:
    push_index(registry.url, "client/push-all", index)
    home = tmp_path / "home"
    for platform in ("linux/amd64", "linux/arm64"):
        result = run_pier(home, "pull", "-q", "--platform", platform, f"{registry.host}/client/push-all:v1")
        assert result.returncode == 0, result.stderr
    target = f"{distribution}/client/pushed:v1"
    assert run_pier(home, "tag", f"{registry.host}/client/push-all:v1", target).returncode == 0

    pushed = run_pier(home, "push", "-q", target)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == index.digest  # the index, byte for byte
    assert manifest_digest(f"http://{distribution}", "client/pushed", "v1") == index.digest

    fresh = tmp_path / "fresh"
    back = run_pier(fresh, "pull", "-q", "--platform", "linux/arm64", target)
    assert back.returncode == 0, back.stderr
    arm = index.image("arm64")
    assert all(ContentStore(fresh).read(b.digest) == b.read() for b in arm.blobs)


def test_copy_between_registries_copies_every_platform(registry, distribution, index, tmp_path) -> None:
    push_index(registry.url, "client/copy-source", index)
    home = tmp_path / "home"
    result = run_pier(
        home, "copy", f"{registry.host}/client/copy-source:v1", f"{distribution}/client/copied:latest"
    )
    assert result.returncode == 0, result.stderr
    assert f"Digest: {index.digest}" in result.stdout
    base = f"http://{distribution}"
    assert manifest_digest(base, "client/copied", "latest") == index.digest
    for image in index.images:
        assert manifest_digest(base, "client/copied", image.digest) == image.digest
        for blob in image.blobs:
            assert httpx.get(f"{base}/v2/client/copied/blobs/{blob.digest}").content == blob.read()
    assert not (home / "blobs").exists()  # a copy streams: nothing lands in the local store

    one = run_pier(
        home,
        "copy",
        "-q",
        "--platform",
        "linux/arm64",
        f"{distribution}/client/copied:latest",
        f"{registry.host}/client/copy-one:v1",
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == index.image("arm64").digest


def test_copy_within_one_registry_mounts(registry, index, tmp_path) -> None:
    push_index(registry.url, "client/mount-source", index)
    result = run_pier(
        tmp_path / "home",
        "copy",
        f"{registry.host}/client/mount-source:v1",
        f"{registry.host}/client/mount-target:v1",
    )
    assert result.returncode == 0, result.stderr
    assert "uploading" not in result.stdout and "mounted" in result.stdout
    assert manifest_digest(registry.url, "client/mount-target", "v1") == index.digest


def test_a_tampering_proxy_fails_pull_and_copy_by_digest(registry, distribution, index, tmp_path) -> None:
    push_index(registry.url, "client/tampered", index)
    with TamperingProxy(registry.url) as proxy:
        home = tmp_path / "home"
        pulled = run_pier(home, "pull", "--platform", "linux/amd64", f"{proxy.host}/client/tampered:v1")
        assert pulled.returncode == 1
        assert "digest mismatch" in pulled.stderr and "Traceback" not in pulled.stderr
        store = ContentStore(home)
        assert not any(store.has(b.digest) for b in index.image("amd64").blobs)  # nothing wrong kept
        assert store.get_ref(f"{proxy.host}/client/tampered", "v1") is None

        copied = run_pier(home, "copy", f"{proxy.host}/client/tampered:v1", f"{distribution}/client/bad:v1")
        assert copied.returncode == 1
        assert "digest mismatch" in copied.stderr and "Traceback" not in copied.stderr
    base = f"http://{distribution}"
    assert manifest_digest(base, "client/bad", "v1") is None
    for blob in index.image("amd64").blobs:
        assert httpx.head(f"{base}/v2/client/bad/blobs/{blob.digest}").status_code == 404


def test_push_errors_are_one_line(registry, tmp_path) -> None:
    missing = run_pier(tmp_path / "home", "push", f"{registry.host}/client/never-pulled:v1")
    assert missing.returncode == 1
    assert "is not in the local store" in missing.stderr and "Traceback" not in missing.stderr


def test_push_sends_again_a_blob_the_registry_holds_cut_short(registry, index, tmp_path) -> None:
    """A registry's copy with the wrong length (a write cut short by a full disk) is not
    "present": the push uploads the blob again and the registry ends up with it whole.

    It is not mounted either: another repository the local tags name holds the same cut
    copy, and a mount would link it again."""
    push_index(registry.url, "client/push-damaged", index)
    push_index(registry.url, "client/push-damaged-other", index)
    home = tmp_path / "home"
    source = f"{registry.host}/client/push-damaged:v1"
    for reference in (source, f"{registry.host}/client/push-damaged-other:v1"):
        assert run_pier(home, "pull", "--platform", "linux/amd64", reference).returncode == 0
    layer = index.image("amd64").layers[-1]
    whole = layer.path.read_bytes()
    registry.storage.write(blob_data_path(layer.digest), whole[: len(whole) // 2])

    pushed = run_pier(home, "push", source)
    assert pushed.returncode == 0, pushed.stderr
    assert f"{layer.digest[7:19]}: pushed" in pushed.stdout, pushed.stdout
    served = httpx.get(f"{registry.url}/v2/client/push-damaged/blobs/{layer.digest}")
    assert served.status_code == 200 and served.content == whole
