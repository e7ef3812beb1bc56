"""Maintenance as an operator does it: ``pier gc|fsck`` run as their own processes on a
store, the store looked at and damaged behind the registry's back, and what it then serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from .oci import Image, sha256
from .servers import REPO_ROOT
from .storeview import LocalStorage, S3Storage, Storage, blob_data_path


def run_storage_command(
    storage: Storage | Path, *args: str, module: str = "registry"
) -> subprocess.CompletedProcess[str]:
    """``pier gc|fsck ARGS --root LOCATION`` as its own process, as an operator runs it."""
    if isinstance(storage, Path):
        storage = LocalStorage(str(storage))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    env.update(storage.env)
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--root", storage.location, "--fsync", "false"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def stored(storage: Storage, digest: str) -> bool:
    return storage.exists(blob_data_path(digest))


def remove(storage: Storage, path: str) -> None:
    """Delete one stored file behind the registry's back."""
    if isinstance(storage, LocalStorage):
        (storage.root / path).unlink()
    else:
        assert isinstance(storage, S3Storage)
        storage.client.delete_object(Bucket=storage.bucket, Key=storage.prefix + path)


async def assert_pulls(client: httpx.AsyncClient, repo: str, reference: str, image: Image) -> None:
    """The manifest and every blob it names answer 200 with the right bytes."""
    got = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": image.media_type})
    assert got.status_code == 200, got.text
    assert got.content == image.manifest
    for blob in image.blobs:
        response = await client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
        assert response.status_code == 200, response.text
        assert sha256(response.content) == sha256(blob)
