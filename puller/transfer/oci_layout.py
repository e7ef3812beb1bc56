"""``pier save`` and ``pier load``: images to and from an OCI image layout directory.

The layout is image-spec's ``image-layout.md``: ``oci-layout``, ``index.json`` and
``blobs/<alg>/<hex>``, which skopeo (``oci:DIR:TAG``), umoci and containerd read. Each
saved image is one entry of ``index.json`` annotated with
``org.opencontainers.image.ref.name`` (the tag, as skopeo and umoci expect) and
``io.containerd.image.name`` (the full reference). Loading copies every blob through
the content store's verified download, so a tampered layout is refused, not imported.
A layout is read from a directory or from a tar file (see ``sources``) alike.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from oci import digest as digests
from oci.jsonsafe import UntrustedJSONError, loads
from oci.manifest import MAX_MANIFEST_SIZE
from oci.mediatypes import OCI_INDEX

from ..errors import PierError
from ..reference import InvalidReference, Reference, parse_reference
from ..store.content_store import ContentStore, DigestMismatch
from ..store.image import InvalidDocument, check_document, is_index, media_type_of, reachable
from .sources import Source, read_small

LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
FULL_NAME = "io.containerd.image.name"
MAX_INDEX_SIZE = MAX_MANIFEST_SIZE  # index.json, and every manifest or index of a layout
COPY_BLOCK = 1 << 20


class LayoutError(PierError):
    pass


@dataclass
class Loaded:
    digest: str
    reference: Reference | None


def blob_name(digest: str, where: str = "") -> str:
    """``blobs/<alg>/<hex>``: the path of a blob in a layout, for a well-formed digest only."""
    if not digests.is_valid(digest):
        raise LayoutError(f"{where}: invalid or unsupported digest {str(digest)[:100]!r}")
    algorithm, hexpart = digests.split(digest)
    return f"blobs/{algorithm}/{hexpart}"


def _blob_path(directory: Path, digest: str) -> Path:
    return directory / blob_name(digest, str(directory))


def is_layout(source: Source) -> bool:
    return read_small(source, "oci-layout", MAX_INDEX_SIZE) is not None


def read_index(source: Source) -> dict:
    """``index.json`` of a layout, after checking its ``oci-layout`` marker."""
    where = source.label
    raw_marker = read_small(source, "oci-layout", MAX_INDEX_SIZE)
    raw = read_small(source, "index.json", MAX_INDEX_SIZE)
    if raw_marker is None or raw is None:
        missing = "oci-layout" if raw_marker is None else "index.json"
        raise LayoutError(f"{where} is not an OCI image layout: {missing} is missing")
    try:
        marker = loads(raw_marker)
    except UntrustedJSONError:
        raise LayoutError(f"{where}/oci-layout is not valid JSON") from None
    if not isinstance(marker, dict):
        raise LayoutError(f"{where}/oci-layout is not a JSON object")
    version = marker.get("imageLayoutVersion")
    if version != LAYOUT_VERSION:
        raise LayoutError(f"{where}: unsupported imageLayoutVersion {str(version)[:40]!r}")
    try:
        index = loads(raw)
    except UntrustedJSONError:
        raise LayoutError(f"{where}/index.json is not valid JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise LayoutError(f"{where}/index.json is not an image index")
    return index


def new_index() -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def add_to_index(store: ContentStore, index: dict, reference: Reference, digest: str) -> None:
    """Name ``digest`` in ``index`` by its tag (replacing an entry with that tag), as skopeo does."""
    entries = index.setdefault("manifests", [])
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


def save(store: ContentStore, images: list[tuple[Reference, str]], directory: Path) -> None:
    """Write (reference, digest) images into ``directory``, adding to a layout already there."""
    if directory.exists() and not directory.is_dir():
        raise LayoutError(f"{directory} is a file: give a directory, or a name ending in .tar")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "oci-layout").exists():
        from .sources import DirectorySource

        index = read_index(DirectorySource(directory))
    elif any(directory.iterdir()):
        raise LayoutError(f"{directory} is neither empty nor an OCI image layout")
    else:
        index = new_index()
        (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
    for reference, digest in images:
        for blob in reachable(store, digest):
            _export_blob(store, blob, directory)
        add_to_index(store, index, reference, digest)
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


def import_blob(store: ContentStore, digest: str, source: Source, name: str | None = None) -> None:
    """Copy ``name`` (default: the digest's layout path) into the store, refused unless it matches."""
    if store.has(digest):
        return
    name = name or blob_name(digest, source.label)
    try:
        stream = source.open(name)
    except FileNotFoundError:
        raise LayoutError(f"{source.label}: blob {digest} is missing from the layout") from None
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
                f"{source.label}: blob {digest} does not match its digest (got {exc.actual})"
            ) from None


def _has_blob(source: Source, digest: str) -> bool:
    try:
        source.open(blob_name(digest, source.label)).close()
    except FileNotFoundError:
        return False
    return True


def _read_document(store: ContentStore, digest: str, source: Source) -> tuple[bytes, dict]:
    """A manifest or index of the layout, verified and checked before anything is imported."""
    if store.has(digest):
        body = store.read(digest)
    else:
        try:
            with source.open(blob_name(digest, source.label)) as stream:
                body = stream.read(MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{source.label}: blob {digest} is missing from the layout") from None
        actual = digests.Digest.of(body, digests.split(digest)[0])
        if len(body) > MAX_INDEX_SIZE or str(actual) != digest:
            raise LayoutError(f"{source.label}: blob {digest} does not match its digest (got {actual})")
    try:
        return body, check_document(body)
    except InvalidDocument as exc:
        raise LayoutError(f"{source.label}: {digest} is not a valid manifest or index: {exc}") from None


def _import_tree(store: ContentStore, digest: str, source: Source) -> None:
    """Children first, the document naming them last: the store never holds a dangling manifest."""
    body, document = _read_document(store, digest, source)
    if is_index(document):
        for entry in document.get("manifests", []):
            if store.has(entry["digest"]) or _has_blob(source, entry["digest"]):
                _import_tree(store, entry["digest"], source)
    else:
        for descriptor in [document["config"], *document.get("layers", [])]:
            import_blob(store, descriptor["digest"], source)
    store.put(digest, body)


def _name_of(entry: dict, repository: str | None) -> Reference | None:
    """The full name if the layout recorded one; else ``repository`` with the layout's tag."""
    annotations = entry.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    full, tag = (annotations.get(key) for key in (FULL_NAME, REF_NAME))
    full, tag = (value if isinstance(value, str) else None for value in (full, tag))
    candidates = [f"{repository}:{tag}" if repository and tag else None, full]
    if tag and "/" in tag:
        candidates.append(tag)
    for candidate in candidates:
        try:
            if candidate:
                return parse_reference(candidate)
        except InvalidReference:
            continue
    return None


def load_layout(store: ContentStore, source: Source, repository: str | None = None) -> list[Loaded]:
    """Import every image of the layout; tags come from its annotations (``repository`` for bare tags)."""
    index = read_index(source)
    loaded = []
    for entry in index.get("manifests", []):
        digest = entry.get("digest", "") if isinstance(entry, dict) else ""
        blob_name(digest, source.label)  # refuses anything but a well-formed digest
        _import_tree(store, digest, source)
        reference = _name_of(entry, repository)
        if reference is not None:
            store.set_ref(reference.name, reference.tag or "latest", digest)
        loaded.append(Loaded(digest, reference))
    return loaded
