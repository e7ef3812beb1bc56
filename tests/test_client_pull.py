"""`pier pull` against real registries: pier itself and Debian's docker-registry."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import httpx
import pytest

from puller.reference import parse_reference
from puller.store.content_store import ContentStore
from puller.transfer.pull import Platform, PullError, pull
from puller.transfer.transport import Credentials

from .helpers import push_blob, push_index, push_manifest, run_pier
from .images import ImageIndex, build_image, build_index
from .servers import REPO_ROOT

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, and distribution


@pytest.fixture
def index(tmp_path) -> ImageIndex:
    return build_index(tmp_path / "layout", "v1")


def test_pull_picks_the_platform_and_verifies_everything(registry, index, tmp_path) -> None:
    push_index(registry.url, "client/multi", index)
    home = tmp_path / "home"
    result = run_pier(home, "pull", f"{registry.host}/client/multi:v1", "--platform", "linux/arm64")
    assert result.returncode == 0, result.stderr
    assert f"Digest: {index.digest}" in result.stdout
    store = ContentStore(home)
    arm = index.image("arm64")
    for blob in (arm.manifest, *arm.blobs):
        assert store.read(blob.digest) == blob.read()
    assert store.read(index.digest) == index.index.read()
    amd_only = set(b.digest for b in index.image("amd64").blobs) - set(b.digest for b in arm.blobs)
    assert amd_only and not any(store.has(d) for d in amd_only)
    assert store.get_ref(f"{registry.host}/client/multi", "v1") == index.digest


def test_second_image_downloads_only_what_it_lacks(registry, tmp_path) -> None:
    layout = tmp_path / "layout"
    first, second = build_image(layout, "one"), build_image(layout, "two")
    for image in (first, second):
        assert image.tag is not None
        for blob in image.blobs:
            push_blob(registry.url, "client/shared", blob)
        push_manifest(registry.url, "client/shared", image.tag, image.manifest)
    home = tmp_path / "home"
    assert run_pier(home, "pull", f"{registry.host}/client/shared:one").returncode == 0
    result = run_pier(home, "pull", f"{registry.host}/client/shared:two")
    assert result.returncode == 0, result.stderr
    shared = {b.digest for b in first.layers} & {b.digest for b in second.layers}
    fresh = {b.digest for b in second.blobs} - {b.digest for b in first.blobs}
    assert first.layers[0].digest in shared and fresh
    for digest in shared:
        assert f"{digest[7:19]}: exists" in result.stdout
    for digest in fresh:
        assert f"{digest[7:19]}: done" in result.stdout


def test_missing_platform_lists_what_there_is(registry, index, tmp_path) -> None:
    push_index(registry.url, "client/platforms", index)
    result = run_pier(
        tmp_path / "home", "pull", f"{registry.host}/client/platforms:v1", "--platform", "linux/s390x"
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "linux/amd64, linux/arm64" in result.stderr


def test_corrupt_blob_fails_the_pull_and_is_not_kept(start_registry, tmp_path) -> None:
    server = start_registry()
    image = build_image(tmp_path / "layout", "v1")
    for blob in image.blobs:
        push_blob(server.url, "client/corrupt", blob)
    push_manifest(server.url, "client/corrupt", "v1", image.manifest)
    layer = image.layers[-1]
    algorithm, hexpart = layer.digest.split(":")
    stored = server.root / "blobs" / algorithm / hexpart[:2] / hexpart / "data"
    stored.write_bytes(bytes(reversed(layer.read())))  # same size, wrong bytes: bit rot upstream
    home = tmp_path / "home"
    result = run_pier(home, "pull", f"{server.host}/client/corrupt:v1")
    assert result.returncode == 1
    assert "digest mismatch" in result.stderr and layer.digest in result.stderr
    assert "Traceback" not in result.stderr
    assert not ContentStore(home).has(layer.digest)
    assert not any((home / "partial").iterdir())


def test_interrupted_download_resumes_with_range(start_registry, tmp_path) -> None:
    registry = start_registry("--access-log", "true")
    image = build_image(tmp_path / "layout", "v1")
    for blob in image.blobs:
        push_blob(registry.url, "client/resume", blob)
    push_manifest(registry.url, "client/resume", "v1", image.manifest)
    home = tmp_path / "home"
    layer = image.layers[-1]
    store = ContentStore(home)
    with store.download(layer.digest) as partial:
        partial.write(layer.read()[: layer.size // 2])  # what a killed pull left behind
    result = run_pier(home, "pull", f"{registry.host}/client/resume:v1")
    assert result.returncode == 0, result.stderr
    assert store.read(layer.digest) == layer.read()
    fetches = registry.log_lines(f'"GET /v2/client/resume/blobs/{layer.digest}"')
    assert fetches and all("206" in line for line in fetches), fetches


def test_bad_references_and_unknown_images(registry, tmp_path) -> None:
    bad = run_pier(tmp_path / "home", "pull", "Upper/Case")
    assert bad.returncode == 1 and "lowercase" in bad.stderr
    unknown = run_pier(tmp_path / "home", "pull", f"{registry.host}/client/none:v1")
    assert unknown.returncode == 1
    assert "MANIFEST_UNKNOWN" in unknown.stderr and "Traceback" not in unknown.stderr


def test_pull_from_the_reference_registry(distribution, index, tmp_path) -> None:
    push_index(f"http://{distribution}", "client/reference", index)
    home = tmp_path / "home"
    result = run_pier(home, "pull", f"{distribution}/client/reference:v1", "--platform", "linux/amd64", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == index.digest
    amd = index.image("amd64")
    store = ContentStore(home)
    assert all(store.read(b.digest) == b.read() for b in (amd.manifest, *amd.blobs))


def test_bearer_token_flow_against_the_reference_registry(token_registry, index, tmp_path) -> None:
    host, tokens = token_registry
    assert httpx.get(f"http://{host}/v2/").status_code == 401  # the registry really demands tokens
    push_token = tokens.issue("alice", ["repository:client/auth:pull,push"])
    push_index(f"http://{host}", "client/auth", index, {"Authorization": f"Bearer {push_token}"})

    store = ContentStore(tmp_path / "home")
    reference = parse_reference(f"{host}/client/auth:v1")
    image = pull(reference, store, Platform("linux", "amd64"), credentials=Credentials("alice", "wonderland"))
    assert image.index_digest == index.digest
    assert all(store.has(b.digest) for b in index.image("amd64").blobs)
    # One token for the repository's pull scope, reused for the manifests and every blob.
    assert [r["scopes"] for r in tokens.requests] == [["repository:client/auth:pull"]]
    assert tokens.requests[0]["user"] == "alice"

    with pytest.raises(PullError, match=r"token service .* refused: 401"):
        pull(
            reference,
            ContentStore(tmp_path / "other"),
            Platform("linux", "amd64"),
            credentials=Credentials("alice", "wrong"),
        )


def test_cli_uses_docker_login_credentials(token_registry, index, tmp_path) -> None:
    host, tokens = token_registry
    push_token = tokens.issue("alice", ["repository:client/login:pull,push"])
    push_index(f"http://{host}", "client/login", index, {"Authorization": f"Bearer {push_token}"})
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    auth = base64.b64encode(b"alice:wonderland").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = {**os.environ, "PIER_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(docker_config)}
    command = [
        sys.executable,
        "-m",
        "puller",
        "pull",
        "-q",
        f"{host}/client/login:v1",
        "--platform",
        "linux/arm64",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == index.digest
    assert tokens.requests[-1]["user"] == "alice"

    wrong = base64.b64encode(b"alice:not-the-password").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": wrong}}}))
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert refused.returncode == 1
    assert "refused: 401" in refused.stderr
    assert "not-the-password" not in refused.stderr and wrong not in refused.stderr
