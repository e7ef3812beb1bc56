"""``pier fsck``: corrupt blobs found and quarantined, missing content reported."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from registry import layout
from registry.references import Digest

from .maintenance import assert_pulls, remove, run_storage_command, stored
from .oci import error_codes, make_image, push_blob, push_image, sha256
from .storeview import blob_data_path

# slow: pier fsck as a process per step
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]


@pytest.fixture
async def served(start_registry):
    server = start_registry()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield server, http


async def test_clean_store_exits_0(served) -> None:
    server, client = served
    await push_image(client, "clean/repo", make_image(), "v1")
    done = run_storage_command(server.storage, "fsck")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"fsck: 4 blobs \([\d.]+kB\) verified, 1 manifests, no problems", done.stdout.strip())


async def test_corrupt_blob_is_reported_then_quarantined_and_pushed_again(served) -> None:
    server, client = served
    repo, image = "corrupt/repo", make_image()
    await push_image(client, repo, image, "v1")
    layer = sha256(image.layers[0])
    server.storage.write(blob_data_path(layer), b"\x00" * len(image.layers[0]))

    found = run_storage_command(server.storage, "fsck")
    assert found.returncode == 1
    assert f"corrupt blob {layer}: its content hashes to sha256:" in found.stdout
    assert found.stdout.splitlines()[-1].endswith("1 problems")
    assert stored(server.storage, layer)  # reported, not touched

    repaired = run_storage_command(server.storage, "fsck", "--repair")
    assert repaired.returncode == 1
    assert f"quarantined {layer}" in repaired.stdout
    quarantine = layout.quarantine_dir(Digest.parse(layer))
    assert server.storage.read(f"{quarantine}/data") == b"\x00" * len(image.layers[0])
    note = json.loads(server.storage.read(f"{quarantine}/note.json"))
    assert note["digest"] == layer and note["actual"] == sha256(b"\x00" * len(image.layers[0]))
    assert not stored(server.storage, layer)
    response = await client.get(f"/v2/{repo}/blobs/{layer}")
    assert response.status_code == 404 and error_codes(response) == ["BLOB_UNKNOWN"]

    missing = run_storage_command(server.storage, "fsck")
    assert missing.returncode == 1
    assert f"missing blob {layer}: referenced by {repo}@{image.digest}" in missing.stdout
    assert f"dangling layer link {repo} -> {layer}" in missing.stdout

    await push_blob(client, repo, image.layers[0])  # the client pushes the right bytes again
    clean = run_storage_command(server.storage, "fsck")
    assert clean.returncode == 0, clean.stdout
    await assert_pulls(client, repo, "v1", image)


async def test_missing_content_is_reported(served) -> None:
    server, client = served
    repo, image, other = "missing/repo", make_image(), make_image()
    await push_image(client, repo, image, "v1")
    await push_image(client, repo, other, "v2")
    config = sha256(image.config)
    remove(server.storage, blob_data_path(config))
    remove(server.storage, blob_data_path(other.digest))
    remove(server.storage, layout.revision_link(repo, Digest.parse(other.digest)))

    done = run_storage_command(server.storage, "fsck")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"missing blob {config}: referenced by {repo}@{image.digest}" in lines
    assert f"dangling layer link {repo} -> {config}: blob missing" in lines
    assert f"dangling tag {repo}:v2 -> {other.digest}: no such revision" in lines
    assert lines[-1].endswith("3 problems")


async def test_missing_manifest_blob_is_reported(served) -> None:
    server, client = served
    repo, image = "nomanifest/repo", make_image()
    await push_image(client, repo, image, "v1")
    remove(server.storage, blob_data_path(image.digest))
    done = run_storage_command(server.storage, "fsck")
    assert done.returncode == 1
    assert f"missing manifest blob {image.digest}: revision of {repo}" in done.stdout
