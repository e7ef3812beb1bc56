"""Tiny builders for test content: random blobs and manifests that reference them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(
    layer_sizes: tuple[int, ...] = (1024, 2048),
    media_type: str = OCI_MANIFEST,
    subject: dict | None = None,
    artifact_type: str | None = None,
    annotations: dict | None = None,
) -> Image:
    docker = media_type == DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layers = [os.urandom(size) for size in layer_sizes]
    config_type = "application/vnd.docker.container.image.v1+json" if docker else OCI_CONFIG
    layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker else OCI_LAYER
    document: dict = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
    }
    if subject is not None:
        document["subject"] = subject
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    return Image(config, layers, json.dumps(document, indent=2).encode(), media_type)


def make_index(children: list[Image], media_type: str = OCI_INDEX) -> bytes:
    arches = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
    manifests = [
        descriptor(child.media_type, child.manifest, platform={"os": "linux", "architecture": arches[i % 5]})
        for i, child in enumerate(children)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> str:
    digest = sha256(data)
    response = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


async def push_manifest(
    client: httpx.AsyncClient, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    return await client.put(
        f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )


async def push_image(client: httpx.AsyncClient, repo: str, image: Image, tag: str = "latest") -> str:
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    response = await push_manifest(client, repo, tag, image.manifest, image.media_type)
    assert response.status_code == 201, response.text
    return image.digest


def error_codes(response: httpx.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]
