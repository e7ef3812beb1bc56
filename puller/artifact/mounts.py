"""Artifacts as read-only volumes (``pier run --mount type=image``): their files in the layer store.

Each layer becomes one layer-store directory holding its file at its path, keyed by the
blob and the path together (the same blob may be named twice, at two paths). Ten
containers mounting the same weights share those directories; stacked with overlayfs
(no upper directory: read-only) they give the artifact's tree, as Kubernetes image
volumes do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PierError
from ..reference import Reference, parse_reference
from ..store.content_store import ContentStore
from ..store.image import is_index, local_digest
from ..transfer.pull import Progress, Remote
from ..transfer.transport import Transport
from ..unpack.layer_store import LayerStore
from .fetch import fetch_raw, fetch_tar, packing_of
from .modelpack import layer_path
from .paths import Claims, UnsafePath
from .pull import ArtifactError, Resolved, artifact_paths, remember, resolve


class MountError(PierError):
    pass


@dataclass
class ImageMount:
    """``--mount type=image,source=REF,target=/path`` or ``-v REF:/path[:ro]``."""

    source: str
    target: str

    @classmethod
    def parse_mount(cls, text: str) -> ImageMount:
        fields: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep and key in ("ro", "readonly"):
                continue
            if not sep:
                raise MountError(f"--mount {text!r}: {item!r} is not KEY=VALUE")
            fields[{"src": "source", "dst": "target", "destination": "target"}.get(key, key)] = value
        kind = fields.pop("type", "")
        if kind != "image":
            raise MountError(f"--mount {text!r}: only type=image is supported (use -v for host directories)")
        fields.pop("readonly", None)
        fields.pop("ro", None)
        source, target = fields.pop("source", ""), fields.pop("target", "")
        if fields:
            raise MountError(f"--mount {text!r}: unknown option {sorted(fields)[0]!r}")
        if not source or not target.startswith("/"):
            raise MountError(f"--mount {text!r}: needs source=REFERENCE and an absolute target=/path")
        return cls(source, target)

    @classmethod
    def parse_volume(cls, text: str) -> ImageMount | None:
        """``REF:/path[:ro]``: an artifact; None for a host path (``/host:/path``), left to the runtime."""
        if text.startswith(("/", ".")):
            return None
        head, sep, mode = text.rpartition(":")
        if mode in ("ro", "rw") and sep:
            if mode == "rw":
                raise MountError(f"-v {text!r}: an artifact is mounted read-only (ro), never rw")
            text = head
        source, sep, target = text.rpartition(":/")
        # Only a reference with its tag or digest is an artifact: ``data/models:/m`` is more
        # likely a host path missing its ``./`` than docker.io/data/models, and pier has no
        # named volumes either.
        named = "@" in source or ":" in source.rsplit("/", 1)[-1]
        if not sep or not named:
            raise MountError(
                f"invalid -v {text!r}: use /host/path:/container/path[:ro], or an artifact "
                "with its tag or digest, REPOSITORY:TAG:/path[:ro] (--mount type=image takes any)"
            )
        return cls(source, "/" + target)


def layer_key(descriptor: dict, path: str) -> str:
    """The layer-store key of an artifact's file: its blob and its path together."""
    text = f"pier-artifact-file\0{descriptor['digest']}\0{path}"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def artifact_keys(manifest: dict) -> list[str]:
    """The layer-store keys a stored artifact manifest uses (for ``pier prune``); bad paths name none."""
    keys = []
    for layer in manifest.get("layers", []):
        path = layer_path(layer)
        if path and isinstance(layer.get("digest"), str):
            keys.append(layer_key(layer, path.removesuffix("/")))
    return keys


def install_layers(
    layers: LayerStore, remote: Remote | None, resolved: Resolved, progress: Progress | None
) -> list[str]:
    """Every layer of the artifact in the layer store, fetched where missing; their keys, in order."""
    report = progress or (lambda *args: None)
    keys = []
    pairs = artifact_paths(resolved.manifest)
    claims = Claims(path for layer, path in pairs if packing_of(layer) == "raw")  # as a pull checks them
    for layer, path in pairs:
        key = layer_key(layer, path)
        keys.append(key)
        if layers.has(key):
            report(layer["digest"], "exists", int(layer["size"]), int(layer["size"]))
            continue
        if remote is None:
            raise ArtifactError(f"{resolved.reference.familiar()}: {path} is not in the local store")
        size = int(layer["size"])

        def populate(diff: Path, layer: dict = layer, path: str = path, size: int = size) -> tuple[int, int]:
            moved = lambda done: report(layer["digest"], "downloading", done, size)  # noqa: E731
            if packing_of(layer) == "raw":
                fetch_raw(remote, layer, diff, path, moved)
                return size, 1
            written = fetch_tar(remote, layer, diff, claims, moved)
            return sum(p.stat().st_size for p in written), len(written)

        layers.install(key, layer["digest"], populate)
        report(layer["digest"], "done", size, size)
    return keys


def _local(store: ContentStore, reference: Reference) -> Resolved | None:
    digest = local_digest(store, reference)
    if digest is None or not store.has(digest):
        return None
    body = store.read(digest)
    manifest = json.loads(body)
    if is_index(manifest):
        return None
    config_digest = (manifest.get("config") or {}).get("digest", "")
    if not store.has(config_digest):
        return None
    return Resolved(reference, digest, body, manifest, store.read(config_digest))


def prepare(
    store: ContentStore,
    text: str,
    transport_for: Callable[[Reference], Transport],
    progress: Progress | None = None,
) -> tuple[list[Path], list[str]]:
    """The layer directories (and keys) of the artifact ``text`` names, pulled into the layer store
    where missing."""
    reference = parse_reference(text)
    layers = LayerStore(store.root)
    resolved = _local(store, reference)
    try:
        if resolved is not None:
            try:
                keys = install_layers(layers, None, resolved, progress)
                return [layers.path(key) for key in keys], keys
            except ArtifactError:
                pass  # recorded, but some files not in the layer store: fetch them
        transport: Transport = transport_for(reference)
        try:
            remote = Remote(transport, reference)
            resolved = resolve(remote)
            keys = install_layers(layers, remote, resolved, progress)
        finally:
            transport.close()
    except UnsafePath as exc:
        raise ArtifactError(str(exc)) from None
    remember(store, resolved)
    return [layers.path(key) for key in keys], keys
