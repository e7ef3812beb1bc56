"""``pier save`` and ``pier load``: images to and from an OCI image layout directory.

The layout is image-spec's ``image-layout.md``: ``oci-layout``, ``index.json`` and
``blobs/<alg>/<hex>``, which skopeo (``oci:DIR:TAG``), umoci and containerd read. Each
saved image is one entry of ``index.json`` annotated with
``org.opencontainers.image.ref.name`` (the tag, as skopeo and umoci expect) and
``io.containerd.image.name`` (the full reference). Loading copies every blob through
the content store's verified download, so a tampered layout is refused, not imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .content_store import ContentStore, DigestMismatch
from .errors import PierError
from .image import DIGEST, OCI_INDEX, InvalidDocument, check_document, is_index, media_type_of, reachable
from .reference import Reference, ReferenceError, parse_reference

LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
FULL_NAME = "io.containerd.image.name"
MAX_INDEX_SIZE = 4 * 1024 * 1024
COPY_BLOCK = 1 << 20


class LayoutError(PierError):
    pass


@dataclass
class Loaded:
    digest: str
    reference: Reference | None


def _blob_path(directory: Path, digest: str) -> Path:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise LayoutError(f"{directory}: invalid or unsupported digest {str(digest)[:100]!r}")
    algorithm, _, hexpart = digest.partition(":")
    return directory / "blobs" / algorithm / hexpart


def _read_index(directory: Path) -> dict:
    try:
        marker = json.loads((directory / "oci-layout").read_text())
        if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise LayoutError(
                f"{directory}: unsupported imageLayoutVersion {marker.get('imageLayoutVersion')!r}"
            )
        with (directory / "index.json").open("rb") as stream:
            raw = stream.read(MAX_INDEX_SIZE + 1)
    except FileNotFoundError as exc:
        raise LayoutError(
            f"{directory} is not an OCI image layout: {Path(exc.filename).name} is missing"
        ) from None
    except (ValueError, AttributeError):
        raise LayoutError(f"{directory}/oci-layout is not valid JSON") from None
    if len(raw) > MAX_INDEX_SIZE:
        raise LayoutError(f"{directory}/index.json is larger than {MAX_INDEX_SIZE} bytes")
    try:
        index = json.loads(raw)
    except ValueError:
        raise LayoutError(f"{directory}/index.json is not valid JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise LayoutError(f"{directory}/index.json is not an image index")
    return index


def save(store: ContentStore, images: list[tuple[Reference, str]], directory: Path) -> None:
    """Write (reference, digest) images into ``directory``, adding to a layout already there."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "oci-layout").exists():
        index = _read_index(directory)
    elif any(directory.iterdir()):
        raise LayoutError(f"{directory} is neither empty nor an OCI image layout")
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
    entries = index.setdefault("manifests", [])
    for reference, digest in images:
        for blob in reachable(store, digest):
            _export_blob(store, blob, directory)
        tag = reference.tag or reference.digest or ""
        entries[:] = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) != tag]
        body = store.read(digest)
        entries.append(
            {
                "mediaType": media_type_of(body),
                "digest": digest,
                "size": len(body),
                "annotations": {REF_NAME: tag, FULL_NAME: str(reference)},
            }
        )
    temporary = directory / ".index.json.tmp"
    temporary.write_text(json.dumps(index, indent=2))
    os.replace(temporary, directory / "index.json")


def _export_blob(store: ContentStore, digest: str, directory: Path) -> None:
    target = _blob_path(directory, digest)
    if target.is_file() and target.stat().st_size == store.path(digest).stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        os.link(store.path(digest), temporary)  # blobs never change: share the bytes when we can
    except OSError:
        shutil.copyfile(store.path(digest), temporary)
    os.replace(temporary, target)


def _import_blob(store: ContentStore, digest: str, directory: Path) -> None:
    if store.has(digest):
        return
    source = _blob_path(directory, digest)
    try:
        stream = source.open("rb")
    except FileNotFoundError:
        raise LayoutError(f"{directory}: blob {digest} is missing from the layout") from None
    with stream, store.download(digest) as download:
        if download.already_done:
            return
        download.restart()
        while block := stream.read(COPY_BLOCK):
            download.write(block)
        try:
            download.commit()
        except DigestMismatch as exc:
            raise LayoutError(
                f"{directory}: blob {digest} does not match its digest (got {exc.actual})"
            ) from None


def _read_document(store: ContentStore, digest: str, directory: Path) -> tuple[bytes, dict]:
    """A manifest or index of the layout, verified and checked before anything is imported."""
    if store.has(digest):
        body = store.read(digest)
    else:
        try:
            with _blob_path(directory, digest).open("rb") as stream:
                body = stream.read(MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{directory}: blob {digest} is missing from the layout") from None
        algorithm, _, expected = digest.partition(":")
        actual = hashlib.new(algorithm, body).hexdigest()
        if len(body) > MAX_INDEX_SIZE or actual != expected:
            raise LayoutError(
                f"{directory}: blob {digest} does not match its digest (got {algorithm}:{actual})"
            )
    try:
        return body, check_document(body)
    except InvalidDocument as exc:
        raise LayoutError(f"{directory}: {digest} is not a valid manifest or index: {exc}") from None


def _import_tree(store: ContentStore, digest: str, directory: Path) -> None:
    """Children first, the document naming them last: the store never holds a dangling manifest."""
    body, document = _read_document(store, digest, directory)
    if is_index(document):
        for entry in document.get("manifests", []):
            if _blob_path(directory, entry["digest"]).exists() or store.has(entry["digest"]):
                _import_tree(store, entry["digest"], directory)
    else:
        for descriptor in [document["config"], *document.get("layers", [])]:
            _import_blob(store, descriptor["digest"], directory)
    store.put(digest, body)


def _name_of(entry: dict, repository: str | None) -> Reference | None:
    """The full name if the layout recorded one; else ``repository`` with the layout's tag."""
    annotations = entry.get("annotations") or {}
    full, tag = annotations.get(FULL_NAME), annotations.get(REF_NAME)
    candidates = [f"{repository}:{tag}" if repository and tag else None, full]
    if tag and "/" in tag:
        candidates.append(tag)
    for candidate in candidates:
        try:
            if candidate:
                return parse_reference(candidate)
        except ReferenceError:
            continue
    return None


def load(store: ContentStore, directory: Path, repository: str | None = None) -> list[Loaded]:
    """Import every image of the layout; tags come from its annotations (``repository`` for bare tags)."""
    index = _read_index(directory)
    loaded = []
    for entry in index.get("manifests", []):
        digest = entry.get("digest", "") if isinstance(entry, dict) else ""
        _blob_path(directory, digest)  # refuses anything but a well-formed digest
        _import_tree(store, digest, directory)
        reference = _name_of(entry, repository)
        if reference is not None:
            store.set_ref(reference.name, reference.tag or "latest", digest)
        loaded.append(Loaded(digest, reference))
    return loaded
