"""The model of an image in the local store: what a reference names and what it is made of.

Transports (pull, push, save, load) move bytes; this module only reads what is already
stored and answers questions about it: which manifest a tag names, which platform's
image an index holds, which blobs an image needs, and the chain ID of its layers (the
key of the unpacked-rootfs cache).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from oci.jsonsafe import UntrustedJSONError, loads

from .content_store import ContentStore
from .errors import PierError
from .platforms import Platform
from .reference import Reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# An image config is JSON read whole, and long histories pass a manifest's 4 MiB: one bound
# for pull, inspect and load, so an image pier pulls it can also save and load again.
MAX_CONFIG_SIZE = 32 * 1024 * 1024


DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


class ImageError(PierError):
    """An image the local store cannot provide; the message says what to do."""


class InvalidDocument(PierError, ValueError):
    """A manifest or index that is not what the image-spec says it must be."""


def _check_descriptor(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise InvalidDocument(f"{where} is not a descriptor")
    if not isinstance(value.get("digest"), str) or not DIGEST.fullmatch(value["digest"]):
        raise InvalidDocument(f"{where} has an invalid or unsupported digest")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidDocument(f"{where} has an invalid size")
    if not isinstance(value.get("mediaType", ""), str):
        raise InvalidDocument(f"{where} has an invalid mediaType")


def check_document(body: bytes) -> dict:
    """Parse a manifest or index from an untrusted source, checking every descriptor in it.

    Everything that enters the local store passes here first, so code reading stored
    documents may rely on their shape, and no digest in them can name a path outside.
    """
    try:
        document = loads(body)
    except UntrustedJSONError as exc:
        raise InvalidDocument(str(exc)) from None
    if not isinstance(document, dict):
        raise InvalidDocument("not a JSON object")
    if not isinstance(document.get("mediaType", ""), str):
        raise InvalidDocument("an invalid mediaType")
    if is_index(document):
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise InvalidDocument("an index without a manifests list")
        for number, entry in enumerate(entries):
            _check_descriptor(entry, f"manifests[{number}]")
            platform = entry.get("platform", {})
            if not isinstance(platform, dict) or not all(
                isinstance(platform.get(key, ""), str) for key in ("os", "architecture", "variant")
            ):
                raise InvalidDocument(f"manifests[{number}] has an invalid platform")
        return document
    _check_descriptor(document.get("config"), "config")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise InvalidDocument("a manifest without a layers list")
    for number, layer in enumerate(layers):
        _check_descriptor(layer, f"layers[{number}]")
    return document


def is_index(manifest: dict) -> bool:
    media_type = manifest.get("mediaType")
    if isinstance(media_type, str) and media_type in INDEX_TYPES:
        return True
    return "manifests" in manifest and "layers" not in manifest


def media_type_of(body: bytes, fallback: str = OCI_MANIFEST) -> str:
    document = json.loads(body)
    if document.get("mediaType"):
        return str(document["mediaType"])
    return OCI_INDEX if is_index(document) else fallback


@dataclass
class Image:
    """One platform's image: its manifest, its config, and where it came from."""

    digest: str  # of the manifest
    manifest: dict
    config: dict

    @property
    def layers(self) -> list[dict]:
        return list(self.manifest.get("layers", []))

    @property
    def blobs(self) -> list[dict]:
        """Descriptors of the config and layers, in manifest order."""
        return [self.manifest["config"], *self.layers]

    @property
    def size(self) -> int:
        return sum(int(d.get("size", 0)) for d in self.blobs)

    @property
    def chain_id(self) -> str:
        """image-spec's ChainID of the layers, or the manifest digest when the config has no diff_ids."""
        diff_ids = (self.config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(self.layers):
            return self.digest
        chain = ""
        for diff_id in diff_ids:
            chain = (
                diff_id
                if not chain
                else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
            )
        return chain or self.digest


def read_json(store: ContentStore, digest: str) -> dict:
    """A stored JSON object (manifest, index, config): a registry wrote it, so it is checked."""
    try:
        document = loads(store.read(digest))
    except FileNotFoundError:
        raise ImageError(
            f"{digest} is not in the local store: pull the image (for this platform) again"
        ) from None
    except UntrustedJSONError as exc:
        raise ImageError(f"{digest} in the local store is not usable JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ImageError(f"{digest} in the local store is not a JSON object")
    return document


def local_digest(store: ContentStore, reference: Reference) -> str | None:
    """The digest a reference names in the local store, if it is there."""
    if reference.digest:
        return reference.digest if store.has(reference.digest) else None
    return store.get_ref(reference.name, reference.tag or "latest")


def load_image(store: ContentStore, digest: str, platform: Platform, *, need_layers: bool = True) -> Image:
    """The image ``digest`` names; an index is narrowed to ``platform``."""
    manifest = read_json(store, digest)
    if is_index(manifest):
        for entry in manifest.get("manifests", []):
            if platform.matches(entry.get("platform", {})) and store.has(entry["digest"]):
                digest = entry["digest"]
                manifest = read_json(store, digest)
                break
        else:
            raise ImageError(
                f"the stored image has no {platform} image in the local store: pull it for {platform}"
            )
    if need_layers:
        for layer in manifest.get("layers", []):
            if not store.has(layer["digest"]):
                raise ImageError(f"layer {layer['digest']} is not in the local store: pull the image again")
    return Image(digest, manifest, read_json(store, manifest["config"]["digest"]))


def reachable(store: ContentStore, digest: str) -> Iterator[str]:
    """Every digest a stored manifest or index refers to, itself included, that the store has."""
    pending = [(digest, True)]  # (digest, is a manifest or index worth reading)
    seen: set[str] = set()
    while pending:
        current, is_document = pending.pop()
        if current in seen or not store.has(current):
            continue
        seen.add(current)
        yield current
        if not is_document:
            continue
        try:
            document = json.loads(store.read(current))
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(document, dict):
            continue
        if is_index(document):
            pending.extend((entry["digest"], True) for entry in document.get("manifests", []))
        elif "config" in document:
            pending.append((document["config"]["digest"], False))
            pending.extend((layer["digest"], False) for layer in document.get("layers", []))


def missing_content(store: ContentStore, digest: str) -> list[str]:
    """Digests that ``digest`` needs, directly or through its children, and the store lacks."""
    missing = []
    pending = [digest]
    while pending:
        current = pending.pop()
        if not store.has(current):
            missing.append(current)
            continue
        document = json.loads(store.read(current))
        if is_index(document):
            pending.extend(entry["digest"] for entry in document.get("manifests", []))
        else:
            blobs = [document["config"], *document.get("layers", [])]
            missing.extend(d["digest"] for d in blobs if not store.has(d["digest"]))
    return missing


def shareable(store: ContentStore, digest: str, platform: Platform) -> tuple[str, str | None]:
    """What can leave the store whole: the digest itself, or one platform's image of a partial index.

    A pull keeps one platform of an index. Pushing or saving that index would hand out a
    document whose other children are nowhere, so the platform's image goes in its place,
    with a note (second item) saying so.
    """
    if not is_index(read_json(store, digest)) or not missing_content(store, digest):
        return digest, None
    image = load_image(store, digest, platform)
    note = f"the local store holds only the {platform} image of this index: using that image ({image.digest})"
    return image.digest, note
