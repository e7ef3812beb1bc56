"""An image or artifact, read from the store and shaped for its page: per platform, its layers,
its config (env, entrypoint, cmd, labels, ports), its history as Dockerfile lines, its
referrers; for a ModelPack model, its metadata and files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oci.mediatypes import IMAGE_CONFIGS

from ..catalog_index import CatalogIndex
from ..errors import RegistryError
from ..manifests import parse_manifest
from ..references import Digest
from ..store import RegistryStore

MAX_CONFIG = 4 << 20  # a config larger than this is not shown (the page would be useless anyway)
MAX_PLATFORMS_SHOWN = 16
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
NOP, SHELL = "/bin/sh -c #(nop) ", "/bin/sh -c "
FILE_ANNOTATIONS = ("org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title")


@dataclass
class Layer:
    digest: str
    media_type: str
    size: int
    path: str = ""  # an artifact's file name, from its annotations


@dataclass
class Variant:
    """One manifest: an image for one platform, or an artifact."""

    digest: str
    media_type: str
    platform: str
    size: int
    config_digest: str = ""
    config_type: str = ""
    artifact_type: str = ""
    layers: list[Layer] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    created: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # a ModelPack config, as stored
    referrers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Image:
    name: str
    reference: str
    digest: str
    media_type: str
    size: int
    is_index: bool
    variants: list[Variant]
    hidden_platforms: int = 0


def dockerfile_line(created_by: str) -> str:
    """``/bin/sh -c #(nop) CMD ["sh"]`` as ``CMD ["sh"]``; a RUN as ``RUN ...``; buildkit's as is."""
    line = created_by.strip()
    if line.startswith(NOP):
        return line[len(NOP) :].strip()
    if line.startswith(SHELL):
        return "RUN " + line[len(SHELL) :]
    return line


def artifact_type(document: dict[str, Any]) -> str:
    """What an artifact is: its ``artifactType``, else its config's type; "" for an image."""
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    assert isinstance(config, dict)
    config_type = str(config.get("mediaType", ""))
    declared = document.get("artifactType")
    if isinstance(declared, str) and declared:
        return declared
    return "" if config_type in IMAGE_CONFIGS or not config_type else config_type


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


async def variant(
    store: RegistryStore, index: CatalogIndex, name: str, digest: Digest, platform: str
) -> Variant:
    record = await store.resolve(name, str(digest))
    manifest = parse_manifest(await store.manifest_body(record), record.media_type)
    document = manifest.document
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    assert isinstance(config, dict)
    found = Variant(
        str(digest),
        record.media_type,
        platform,
        record.size + sum(d.size for d in manifest.blobs),
        config_digest=str(config.get("digest", "")),
        config_type=str(config.get("mediaType", "")),
        artifact_type=artifact_type(document),
        annotations={str(k): str(v) for k, v in (manifest.annotations or {}).items()},
    )
    for entry in document.get("layers", []) if isinstance(document.get("layers"), list) else []:
        if not isinstance(entry, dict):
            continue
        notes = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
        assert isinstance(notes, dict)
        path = next((str(notes[k]) for k in FILE_ANNOTATIONS if k in notes), "")
        found.layers.append(
            Layer(
                str(entry.get("digest", "")), str(entry.get("mediaType", "")), int(entry.get("size", 0)), path
            )
        )
    if manifest.blobs and found.config_digest:
        data = await store.small_document(name, manifest.blobs[0].digest, MAX_CONFIG)
        if data is not None and found.config_type == MODEL_CONFIG:
            found.model = data
        elif data is not None:
            _read_image_config(found, data)
    listing = await store.referrers(name, digest, None)
    found.referrers = [m for m in listing["manifests"] if isinstance(m, dict)]
    return found


def _read_image_config(found: Variant, data: dict[str, Any]) -> None:
    settings = data.get("config") if isinstance(data.get("config"), dict) else {}
    assert isinstance(settings, dict)
    found.env = _strings(settings.get("Env"))
    found.entrypoint = _strings(settings.get("Entrypoint"))
    found.cmd = _strings(settings.get("Cmd"))
    found.workdir = str(settings.get("WorkingDir") or "")
    found.user = str(settings.get("User") or "")
    labels = settings.get("Labels")
    found.labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    ports = settings.get("ExposedPorts")
    found.ports = sorted(str(p) for p in ports) if isinstance(ports, dict) else []
    found.created = str(data.get("created") or "")
    history = data.get("history") if isinstance(data.get("history"), list) else []
    assert isinstance(history, list)
    found.history = [
        dockerfile_line(str(h.get("created_by", "")))
        for h in history
        if isinstance(h, dict) and h.get("created_by")
    ]
    if not found.platform and data.get("os"):
        found.platform = "/".join(str(data[k]) for k in ("os", "architecture", "variant") if data.get(k))


async def load(store: RegistryStore, index: CatalogIndex, name: str, reference: str) -> Image:
    """The image ``reference`` names in ``name``; ``RegistryError`` when there is none."""
    record = await store.resolve(name, reference)
    manifest = parse_manifest(await store.manifest_body(record), record.media_type)
    summary = await index.summary(name, record.digest)
    size = summary.size if summary is not None else record.size
    if not manifest.is_index:
        one = await variant(store, index, name, record.digest, "")
        return Image(name, reference, str(record.digest), record.media_type, size, False, [one])
    variants = []
    entries = [e for e in manifest.document.get("manifests", []) if isinstance(e, dict)]
    for entry in entries[:MAX_PLATFORMS_SHOWN]:
        platform = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
        assert isinstance(platform, dict)
        label = "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k))
        try:
            variants.append(await variant(store, index, name, Digest.parse(str(entry.get("digest"))), label))
        except RegistryError:
            continue  # a child this repository lacks (a mirror's partial index)
    hidden = max(0, len(entries) - MAX_PLATFORMS_SHOWN)
    return Image(name, reference, str(record.digest), record.media_type, size, True, variants, hidden)
