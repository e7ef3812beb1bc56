"""The model of an image in the local store: what a reference names and what it is made of.

Transports (pull, push, save, load) move bytes; this module only reads what is already
stored and answers questions about it: which manifest a tag names, which platform's
image an index holds, which blobs an image needs, and the diff IDs of its layers (the
keys of the layer store).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from oci import manifest as documents
from oci.digest import digest_of
from oci.digest import is_valid as digest_is_valid
from oci.jsonsafe import UntrustedJSONError, loads
from oci.manifest import ManifestError
from oci.mediatypes import OCI_INDEX, OCI_MANIFEST

from ..errors import PierError
from ..reference import Reference
from .content_store import ContentStore
from .platforms import Platform


class ImageError(PierError):
    """An image the local store cannot provide; the message says what to do."""


class InvalidDocument(PierError, ValueError):
    """A manifest or index that is not what the image-spec says it must be."""


def check_document(body: bytes) -> dict:
    """Parse a manifest or index from an untrusted source, checking every descriptor in it.

    Everything that enters the local store passes here first, so code reading stored
    documents may rely on their shape, and no digest in them can name a path outside.
    """
    try:
        parsed = documents.parse_manifest(body, strict=False)
    except ManifestError as exc:
        raise InvalidDocument(str(exc)) from None
    if not parsed.is_index:
        parsed.document.setdefault("layers", [])  # left out: none, as every reader takes it
    return parsed.document


def is_index(manifest: dict) -> bool:
    return documents.is_index(manifest)


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
    def diff_ids(self) -> list[str]:
        """The config's digests of the uncompressed layers, one per layer: the layer store's keys."""
        found = (self.config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(found, list) or len(found) != len(self.layers):
            raise ImageError(
                f"image {self.digest}: its config does not name one diff ID per layer "
                f"({len(found) if isinstance(found, list) else 'none'} for {len(self.layers)} layers)"
            )
        for diff_id in found:
            if not isinstance(diff_id, str) or not digest_is_valid(diff_id):
                shown = str(diff_id)[:100]
                raise ImageError(f"image {self.digest}: its config names an invalid diff ID {shown!r}")
        return list(found)

    @property
    def chain_id(self) -> str:
        """image-spec's ChainID of the layers, or the manifest digest when the config has no diff_ids."""
        diff_ids = (self.config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(self.layers):
            return self.digest
        chain = ""
        for diff_id in diff_ids:
            chain = digest_of(f"{chain} {diff_id}".encode()) if chain else diff_id
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
        _check_whole(store, digest)
        return digest, None
    image = load_image(store, digest, platform, need_layers=False)
    _check_whole(store, image.digest)
    note = f"the local store holds only the {platform} image of this index: using that image ({image.digest})"
    return image.digest, note


def _check_whole(store: ContentStore, digest: str) -> None:
    """Refuse to hand out an image some of whose blobs are not here (never a silent partial copy)."""
    missing = missing_content(store, digest)
    if missing:
        raise ImageError(
            f"{len(missing)} blob(s) of {digest} are not in the local store (first: {missing[0]}); "
            "layers kept only unpacked (PIER_KEEP_LAYER_BLOBS=0) cannot be pushed or saved: "
            "pull the image again"
        )
