"""What the governance suites share: pier's own ``/v2/_pier`` API read over HTTP, content
pushed through the distribution API, and a store's files counted or aged behind the
registry's back."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import httpx

from registry import layout
from registry.references import Digest

from .oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor, sha256
from .storeview import LocalStorage, Storage, blob_data_path

# A blob linked into a repository: as a layer or config, or as a manifest revision.
LINK = re.compile(
    r"repositories/(?P<name>.+)/(?:_layers|_manifests/revisions)/sha256/(?P<hex>[0-9a-f]{64})/link"
)


def as_json(*entries: dict[str, Any]) -> str:
    """A ``--quotas``/``--retention`` value."""
    return json.dumps(list(entries))


def linked_bytes(storage: Storage, scope: str, nested: bool = True) -> int:
    """Bytes of the distinct blobs linked under ``scope`` (a namespace, or a repository and,
    when ``nested``, the repositories under its name), read from the store itself."""
    digests = set()
    for path in storage.files(f"repositories/{scope}"):
        found = LINK.fullmatch(path)
        if found and (nested or found["name"] == scope):
            digests.add(f"sha256:{found['hex']}")
    sizes = {path: size for path, size in storage.files("blobs").items()}
    return sum(sizes.get(blob_data_path(digest), 0) for digest in digests)


def linked(storage: Storage, repo: str, digest: str) -> bool:
    return bool(storage.files(f"{layout.layers_dir(repo)}/sha256/{digest[7:]}"))


async def usage(client: httpx.AsyncClient) -> tuple[dict[str, dict], dict[str, dict]]:
    """``/v2/_pier/usage`` as (namespaces by name, repository quotas by name)."""
    answer = await client.get("/v2/_pier/usage")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return (
        {entry["namespace"]: entry for entry in body["namespaces"]},
        {entry["repository"]: entry for entry in body["repositories"]},
    )


async def audit(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    """The audit log's entries matching ``query``, newest first."""
    answer = await client.get("/v2/_pier/audit", params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()["entries"]


async def upload(client: httpx.AsyncClient, repo: str, data: bytes, chunked: bool = False) -> httpx.Response:
    """One blob in one ``POST ?digest=``, or as a session: ``POST``, ``PATCH``, ``PUT ?digest=``."""
    if not chunked:
        return await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    started = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    patched = await client.patch(
        started.headers["location"], content=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert patched.status_code == 202, patched.text
    return await client.put(patched.headers["location"], params={"digest": sha256(data)})


def backdate(storage: Storage, path: str, seconds: float) -> None:
    """Make a stored file look ``seconds`` old, as if written then (the filesystem store only)."""
    assert isinstance(storage, LocalStorage), "ages files on the filesystem store only"
    then = time.time() - seconds
    os.utime(storage.root / path, (then, then))


def backdate_tag(storage: Storage, repo: str, tag: str, seconds: float) -> None:
    backdate(storage, layout.tag_link(repo, tag), seconds)


def backdate_manifest(storage: Storage, repo: str, digest: str, seconds: float) -> None:
    backdate(storage, layout.revision_link(repo, Digest.parse(digest)), seconds)


def denial(response: httpx.Response) -> dict[str, Any]:
    """The one error of a 403 ``DENIED`` answer."""
    assert response.status_code == 403, response.text
    errors = response.json()["errors"]
    assert [error["code"] for error in errors] == ["DENIED"], errors
    return errors[0]


def image_of(*layers: bytes, subject: dict[str, Any] | None = None) -> Image:
    """An image of the layers given (shared ones too), with a config of its own."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    if subject is not None:
        document["subject"] = subject
    return Image(config, list(layers), json.dumps(document).encode())
