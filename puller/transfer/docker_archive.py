"""``pier save`` to a tar and ``pier load`` of a ``docker save`` tar.

The tar pier writes is what docker 25+ writes: an OCI image layout (``oci-layout``,
``index.json``, ``blobs/``) plus docker's ``manifest.json`` (``Config``, ``RepoTags``,
``Layers``) pointing at the same blobs, so ``docker load``, skopeo's ``docker-archive:``
and ``oci-archive:``, and pier read it, and no byte is stored twice. Layers stay as the
registry sent them (compressed): docker and skopeo detect the compression themselves.

A ``docker save`` tar without an OCI index (docker before 25, skopeo's
``docker-archive:``) is loaded from ``manifest.json``: the config is named by its own
digest, and each layer is checked against the config's ``rootfs.diff_ids`` before the
image's OCI manifest is written, so nothing unverified enters the store.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from oci.digest import DEFAULT_ALGORITHM, digest_of, hex_pattern, new_hasher
from oci.jsonsafe import UntrustedJSONError, loads
from oci.manifest import MAX_CONFIG_SIZE
from oci.mediatypes import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST

from ..errors import PierError
from ..reference import InvalidReference, Reference, parse_reference
from ..store.content_store import ContentStore
from ..store.image import (
    Image,
    ImageError,
    check_document,
    load_image,
    reachable,
    read_json,
)
from ..store.platforms import Platform
from ..text import plural
from ..unpack.layers import decompressed, is_layer_fault
from .oci_layout import (
    LAYOUT_VERSION,
    MAX_INDEX_SIZE,
    LayoutError,
    Loaded,
    add_to_index,
    blob_name,
    import_blob,
    new_index,
)
from .sources import Source, read_small

READ_BLOCK = 1 << 20
# The name says which content it holds: check that it does. docker names everything by sha256.
_HEX = hex_pattern(DEFAULT_ALGORITHM)
_NAMED = re.compile(rf"(?:.*/)?blobs/{DEFAULT_ALGORITHM}/({_HEX})|({_HEX})\.json")


def _image_of(store: ContentStore, digest: str, platform: Platform) -> Image:
    """The image ``manifest.json`` describes: ``platform``'s of an index, else its first one stored."""
    try:
        return load_image(store, digest, platform, need_layers=False)
    except ImageError:
        for entry in read_json(store, digest).get("manifests", []):
            if store.has(entry["digest"]):
                return load_image(store, entry["digest"], platform, need_layers=False)
        raise


def _repo_tag(reference: Reference) -> list[str]:
    """docker's RepoTags: the familiar name with its tag; none for an image saved by digest."""
    if not reference.tag:
        return []
    return [Reference(reference.domain, reference.path, reference.tag, None).familiar()]


def _info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = (0, 0o755, 0) if directory else (size, 0o644, 0)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def save_archive(
    store: ContentStore,
    images: list[tuple[Reference, str]],
    path: Path,
    platform: Platform,
    docker: bool = True,
) -> None:
    """Write ``images`` to the tar ``path``, atomically; ``docker=False`` leaves manifest.json out."""
    if path.is_dir():
        raise LayoutError(f"{path} is a directory: a tar is written to a file")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as out:
            write_archive(store, images, out, platform, docker)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_archive(
    store: ContentStore,
    images: list[tuple[Reference, str]],
    out: BinaryIO,
    platform: Platform,
    docker: bool = True,
) -> None:
    """The tar of ``images`` written to ``out`` front to back (a file, or a pipe as ``docker save >``)."""
    index = new_index()
    items: list[dict] = []
    blobs: dict[str, None] = {}  # every blob once, in a stable order
    for reference, digest in images:
        blobs.update(dict.fromkeys(reachable(store, digest)))
        add_to_index(store, index, reference, digest)
        image = _image_of(store, digest, platform)
        config = blob_name(image.manifest["config"]["digest"])
        layers = [blob_name(d["digest"]) for d in image.layers]
        same = [item for item in items if item["Config"] == config and item["Layers"] == layers]
        if same:  # one image under two names: one entry with both tags, as docker writes it
            same[0]["RepoTags"] += [t for t in _repo_tag(reference) if t not in same[0]["RepoTags"]]
        else:
            items.append({"Config": config, "RepoTags": _repo_tag(reference), "Layers": layers})
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode(),
        "index.json": json.dumps(index, indent=2).encode(),
    }
    if docker:
        files["manifest.json"] = json.dumps(items, indent=2).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", *sorted({blob_name(b).rsplit("/", 1)[0] for b in blobs})):
            tar.addfile(_info(directory, 0, directory=True))
        for blob in blobs:
            with store.path(blob).open("rb") as stream:
                tar.addfile(_info(blob_name(blob), os.fstat(stream.fileno()).st_size), stream)
        for name, data in files.items():
            tar.addfile(_info(name, len(data)), io.BytesIO(data))


class _Hashing(io.RawIOBase):
    """A reader that hashes every byte read through it: the blob's digest, while it is decompressed.

    A raw stream (``readinto``), as gzip's reader needs one.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = new_hasher(DEFAULT_ALGORITHM)
        self.size = 0

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # any writable buffer reaches here as one of these
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def readable(self) -> bool:
        return True


def _layer_type(source: Source, name: str) -> str:
    with source.open(name) as stream:
        magic = stream.read(4)
    if magic[:2] == b"\x1f\x8b":
        return OCI_LAYER + "+gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER + "+zstd"
    return OCI_LAYER


def _scan_layer(source: Source, name: str) -> tuple[dict, str]:
    """(descriptor, diff_id) of the layer file ``name``: its digest as stored and as a plain tar."""
    try:
        media_type = _layer_type(source, name)
    except FileNotFoundError:
        raise LayoutError(f"{source.label}: layer {name[:200]} is missing from the archive") from None
    plain = new_hasher(DEFAULT_ALGORITHM)
    with source.open(name) as stream:
        raw = _Hashing(stream)
        try:
            with decompressed(raw, media_type) as reader:  # type: ignore[arg-type]  # a RawIOBase: read() is all it needs
                while block := reader.read(READ_BLOCK):
                    plain.update(block)
        except PierError:
            raise
        except Exception as exc:  # a damaged gzip or zstd stream: the unpacker's rule, one line
            if not is_layer_fault(exc):
                raise
            raise LayoutError(f"{source.label}: layer {name} cannot be decompressed: {exc}") from None
        while raw.read(READ_BLOCK):  # whatever follows the compressed stream is part of the blob
            pass
    stored = f"{DEFAULT_ALGORITHM}:{raw.hash.hexdigest()}"
    descriptor = {"mediaType": media_type, "digest": stored, "size": raw.size}
    return descriptor, f"{DEFAULT_ALGORITHM}:{plain.hexdigest()}"


def _check_name(source: Source, name: str, digest: str) -> None:
    match = _NAMED.fullmatch(name)
    named = match and (match.group(1) or match.group(2))
    if named and f"{DEFAULT_ALGORITHM}:{named}" != digest:
        raise LayoutError(f"{source.label}: {name} does not match its digest (got {digest})")


def _strings(value: object, what: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LayoutError(f"{where}/manifest.json: {what} is not a list of strings")
    return value


def _load_item(store: ContentStore, source: Source, item: object) -> str:
    """Import one entry of manifest.json, verified; the digest of the OCI manifest written for it."""
    where = source.label
    if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
        raise LayoutError(f"{where}/manifest.json: an entry without a Config")
    layers = _strings(item.get("Layers"), "Layers", where)
    config_body = read_small(source, item["Config"], MAX_CONFIG_SIZE)
    if config_body is None:
        raise LayoutError(f"{where}: {item['Config'][:200]} is missing from the archive")
    config_digest = digest_of(config_body)
    _check_name(source, item["Config"], config_digest)
    try:
        diff_ids = loads(config_body)["rootfs"]["diff_ids"]  # type: ignore[index]  # any other shape raises, caught below
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise TypeError
    except (UntrustedJSONError, KeyError, TypeError):
        raise LayoutError(f"{where}: {item['Config'][:200]} is not an image config with diff_ids") from None
    if len(diff_ids) != len(layers):
        counts = f"{plural(len(layers), 'layer')} for {plural(len(diff_ids), 'diff_id')} in its config"
        raise LayoutError(f"{where}/manifest.json: {counts}")
    descriptors = []
    for name, diff_id in zip(layers, diff_ids, strict=True):
        descriptor, actual = _scan_layer(source, name)
        _check_name(source, name, descriptor["digest"])
        if actual != diff_id:
            raise LayoutError(f"{where}: layer {name[:200]} is not the config's {diff_id} (got {actual})")
        import_blob(store, descriptor["digest"], source, name)  # read again, verified on the way in
        descriptors.append(descriptor)
    store.put(config_digest, config_body)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_body)},
        "layers": descriptors,
    }
    body = json.dumps(manifest, indent=2).encode()
    check_document(body)
    digest = digest_of(body)
    store.put(digest, body)
    return digest


def load_archive(store: ContentStore, source: Source, repository: str | None = None) -> list[Loaded]:
    """Import every image of a ``docker save`` tar; ``repository`` names an image without RepoTags."""
    raw = read_small(source, "manifest.json", MAX_INDEX_SIZE)
    try:
        items = loads(raw) if raw is not None else None
    except UntrustedJSONError:
        raise LayoutError(f"{source.label}/manifest.json is not valid JSON") from None
    if not isinstance(items, list):
        raise LayoutError(f"{source.label}/manifest.json is not a list of images")
    loaded = []
    for item in items:
        tags = _strings(item.get("RepoTags") if isinstance(item, dict) else None, "RepoTags", source.label)
        try:
            references = [parse_reference(tag) for tag in tags or ([repository] if repository else [])]
        except InvalidReference as exc:
            raise LayoutError(f"{source.label}/manifest.json: {exc}") from None
        digest = _load_item(store, source, item)
        for reference in references:
            store.set_ref(reference.name, reference.tag or "latest", digest)
        loaded += [Loaded(digest, reference) for reference in references] or [Loaded(digest, None)]
    return loaded
