"""Manifests and indexes: parsed from untrusted bytes, checked, with their limits.

One validation for both sides. Every descriptor's digest passes ``Digest.parse``, so no
document that passes here can name a path outside a store. ``strict`` adds what a
registry demands of a pushed manifest (``schemaVersion`` 2, a manifest media type, every
descriptor's ``mediaType``); the client reads documents that a registry or a tool already
accepted, and needs only that they are safe and usable. Failures raise ``ManifestError``:
the server answers ``MANIFEST_INVALID``, the client prints one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .digest import Digest, DigestError
from .jsonsafe import TooDeepError, UntrustedJSONError, loads
from .mediatypes import IMAGE_TYPES, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # a manifest or index read whole: distribution's limit
# An image config is JSON read whole, and long histories pass a manifest's 4 MiB: one bound
# for pull, inspect and load, so an image pier pulls it can also save and load again.
MAX_CONFIG_SIZE = 32 * 1024 * 1024
# Real manifests nest 5 levels deep (index > manifests > descriptor > platform > features).
MAX_DEPTH = 32
PLATFORM_FIELDS = ("os", "architecture", "variant")


class ManifestError(ValueError):
    """A manifest or index that is not what the image-spec says it must be.

    ``too_deep``: refused for its nesting before it was parsed (the server words that its way).
    """

    def __init__(self, message: str, *, too_deep: bool = False) -> None:
        super().__init__(message)
        self.too_deep = too_deep


@dataclass(frozen=True)
class Descriptor:
    media_type: str  # "" where a lenient parse found none
    digest: Digest
    size: int
    urls: list[str] = field(default_factory=list)
    artifact_type: str | None = None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    blobs: list[Descriptor]  # an image's config then its layers: blobs of the repository
    children: list[Descriptor]  # the manifests an index points to
    subject: Descriptor | None
    artifact_type: str | None  # the referrers API's: the config's media type when unset
    annotations: dict[str, str] | None
    is_index: bool = False  # by its media type, or by its shape when the type is not one of ours
    document: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def is_index(document: dict[str, Any]) -> bool:
    """Whether a parsed document is an index: by its declared type, else by its shape."""
    media_type = document.get("mediaType")
    if media_type in INDEX_TYPES:
        return True
    if media_type in IMAGE_TYPES:
        return False
    return "manifests" in document and "layers" not in document


def media_type_of(document: dict[str, Any]) -> str:
    """The declared media type, or (the image-spec lets it be left out) the one its shape says."""
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return OCI_INDEX if is_index(document) else OCI_MANIFEST


def _descriptor(value: object, where: str, strict: bool) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} is not a descriptor")
    media_type = value.get("mediaType", "")
    if not isinstance(media_type, str) or (strict and not media_type):
        raise ManifestError(f"{where} has an invalid mediaType")
    raw_digest = value.get("digest")
    try:
        digest = Digest.parse(raw_digest) if isinstance(raw_digest, str) else None
    except DigestError:
        digest = None
    if digest is None:
        raise ManifestError(f"{where} has an invalid or unsupported digest {str(raw_digest)[:150]!r}")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where} has an invalid size")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise ManifestError(f"{where}: urls must be a list of strings")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError(f"{where}: artifactType must be a string")
    return Descriptor(media_type, digest, size, urls, artifact_type)


def _check_platform(entry: dict[str, Any], where: str) -> None:
    platform = entry.get("platform", {})
    if not isinstance(platform, dict) or not all(
        isinstance(platform.get(key, ""), str) for key in PLATFORM_FIELDS
    ):
        raise ManifestError(f"{where} has an invalid platform")


def decode(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object of a document; ``ManifestError`` for anything else."""
    try:
        document = loads(body, max_depth)
    except TooDeepError as exc:
        raise ManifestError(str(exc), too_deep=True) from None
    except UntrustedJSONError as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(document, dict):
        raise ManifestError("not a JSON object")
    return document


def parse_manifest(body: bytes, content_type: str | None = None, *, strict: bool = True) -> Manifest:
    """A manifest or index, checked; its media type from ``content_type`` or the body.

    ``strict``: the registry's rules for a pushed manifest (see the module's docstring).
    """
    document = decode(body)
    if strict and document.get("schemaVersion") != 2:
        raise ManifestError("schemaVersion must be 2")
    body_type = document.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestError("mediaType must be a string")
    header_type = (content_type or "").split(";", 1)[0].strip() or None
    if header_type and body_type and header_type != body_type:
        raise ManifestError(f"Content-Type {header_type[:200]} does not match mediaType {body_type[:200]}")
    media_type = header_type or media_type_of(document)
    if strict and media_type not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type: {media_type[:200]}")

    blobs: list[Descriptor] = []
    children: list[Descriptor] = []
    index = media_type in INDEX_TYPES or (media_type not in IMAGE_TYPES and is_index(document))
    if index:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("an index without a manifests list")
        for number, entry in enumerate(entries):
            where = f"manifests[{number}]"
            children.append(_descriptor(entry, where, strict))
            _check_platform(entry, where)
    else:
        blobs.append(_descriptor(document.get("config"), "config", strict))
        layers = document.get("layers", [])
        if not isinstance(layers, list):
            raise ManifestError("a manifest without a layers list")
        blobs.extend(_descriptor(layer, f"layers[{n}]", strict) for n, layer in enumerate(layers))

    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject", strict)
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError("artifactType must be a string")
    if artifact_type is None and blobs:
        artifact_type = blobs[0].media_type or None  # the referrers API's rule
    annotations = document.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        raise ManifestError("annotations must map strings to strings")
    return Manifest(media_type, blobs, children, subject, artifact_type, annotations, index, document)
