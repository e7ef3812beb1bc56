"""Manifest media types and validation: what a manifest must be before it is stored."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import RegistryError
from .references import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES


# Real manifests nest 5 levels deep (index > manifests > descriptor > platform > features).
MAX_JSON_DEPTH = 32


@dataclass
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: list[str] = field(default_factory=list)
    artifact_type: str | None = None


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[Descriptor]  # config and layers: must be blobs of the repository
    children: list[Descriptor]  # manifests an index points to
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None


def _invalid(detail: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", detail)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where}: descriptor must be an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}: mediaType missing")
    if not isinstance(digest, str):
        raise _invalid(f"{where}: digest missing")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}: size must be a non-negative integer")
    try:
        parsed = Digest.parse(digest)
    except RegistryError:
        raise _invalid(f"{where}: invalid digest {digest[:150]!r}") from None
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}: urls must be a list of strings")
    artifact_type = value.get("artifactType")
    return Descriptor(media_type, parsed, size, urls, artifact_type)


def _depth(document: Any) -> int:
    """How deeply arrays and objects nest, without recursion (the input is hostile)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return deepest


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a pushed manifest; the media type comes from the header or the body."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise _invalid(f"manifest JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise _invalid(f"manifest is not valid JSON: {str(exc)[:200]}") from None
    if _depth(document) > MAX_JSON_DEPTH:
        raise _invalid(f"manifest JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    body_type = document.get("mediaType")
    header_type = (content_type or "").split(";", 1)[0].strip() or None
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if header_type and body_type and header_type != body_type:
        raise _invalid(f"Content-Type {header_type} does not match mediaType {body_type}")
    media_type = header_type or body_type
    if media_type is None:
        # The OCI image spec lets mediaType be omitted; the shape tells which it is.
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type: {media_type[:200]}")

    blobs: list[Descriptor] = []
    children: list[Descriptor] = []
    if media_type in IMAGE_TYPES:
        if "config" not in document:
            raise _invalid("image manifest has no config")
        blobs.append(_descriptor(document["config"], "config"))
        layers = document.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        blobs.extend(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers))
    else:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise _invalid("index has no manifests list")
        children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(entries)]

    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject")

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    if artifact_type is None and media_type in IMAGE_TYPES:
        # The referrers API reports the config's media type when artifactType is unset.
        artifact_type = blobs[0].media_type
    annotations = document.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        raise _invalid("annotations must map strings to strings")
    return ParsedManifest(media_type, blobs, children, subject, artifact_type, annotations)
