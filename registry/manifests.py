"""What a manifest must be before it is stored: ``oci``'s validation, the spec's error code.

The media types, the model (``ParsedManifest``, ``Descriptor``) and the rules are
``oci.manifest``'s, shared with the client; the server adds its strict rules for a pushed
manifest and answers every failure with ``MANIFEST_INVALID``.
"""

from __future__ import annotations

from oci.manifest import MAX_DEPTH, Descriptor, ManifestError
from oci.manifest import Manifest as ParsedManifest
from oci.manifest import parse_manifest as _parse
from oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)

from .errors import RegistryError

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_TYPES",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_JSON_DEPTH",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "ParsedManifest",
    "parse_manifest",
]

MAX_JSON_DEPTH = MAX_DEPTH


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a pushed manifest; the media type comes from the header or the body."""
    try:
        return _parse(body, content_type, strict=True)
    except ManifestError as exc:
        if exc.too_deep:
            raise RegistryError(
                "MANIFEST_INVALID", f"manifest JSON nests deeper than {MAX_DEPTH} levels"
            ) from None
        raise RegistryError("MANIFEST_INVALID", str(exc)) from None
