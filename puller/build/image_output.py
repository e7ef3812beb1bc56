"""The built image: its config and manifest, in OCI or docker schema2, stored and tagged.

The JSON is written the same way every time (fixed key order, no random IDs, no
host names), so the same inputs give the same digest on any machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from oci.mediatypes import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST

from ..errors import PierError
from ..store.content_store import ContentStore

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TO_DOCKER = {
    "application/vnd.oci.image.layer.v1.tar+gzip": DOCKER_LAYER,
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.docker.image.rootfs.diff.tar",
}
TO_OCI = {docker: oci for oci, docker in TO_DOCKER.items()}
CONFIG_FIELDS = (  # the order docker writes them
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Healthcheck",
    "Volumes",
    "WorkingDir",
    "Labels",
    "OnBuild",
    "StopSignal",
    "Shell",
)


@dataclass(frozen=True)
class Layer:
    descriptor: dict  # mediaType, digest, size
    diff_id: str


@dataclass(frozen=True)
class Built:
    digest: str  # the manifest's
    config_digest: str
    media_type: str


def _json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _layer_type(media_type: str, docker: bool) -> str:
    if docker:
        if media_type in TO_DOCKER.values():
            return media_type
        if media_type not in TO_DOCKER:
            raise PierError(
                f"a {media_type} layer cannot be part of a docker schema2 image: use --format oci"
            )
        return TO_DOCKER[media_type]
    return TO_OCI.get(media_type, media_type)


def write_image(
    store: ContentStore,
    image: dict,
    config: dict,
    layers: list[Layer],
    history: list[dict],
    *,
    docker: bool,
) -> Built:
    """Store the config and manifest of an image made of ``layers``; its digests."""
    inner = {name: config[name] for name in CONFIG_FIELDS if config.get(name) not in (None, [], {})}
    if not docker:
        inner.pop("Shell", None)  # docker's extension: OCI configs have no such field
    document: dict = {"created": history[-1]["created"] if history else image.get("created")}
    if image.get("author"):
        document["author"] = image["author"]
    document["architecture"] = image["architecture"]
    document["os"] = image["os"]
    if image.get("variant"):
        document["variant"] = image["variant"]
    document["config"] = inner
    document["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    document["history"] = history
    config_bytes = _json(document)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    store.put(config_digest, config_bytes)
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {**layer.descriptor, "mediaType": _layer_type(layer.descriptor["mediaType"], docker)}
            for layer in layers
        ],
    }
    body = _json(manifest)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    store.put(digest, body)
    return Built(digest, config_digest, manifest_type)
