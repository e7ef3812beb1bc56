"""Delete what no tag and no container needs any more: blobs, and unpacked layers.

Runs under the store's exclusive lock, so it never races a pull (which holds the lock
shared from its first blob until its tag is written) or a container being prepared
(which holds it until its state names the layers under its mount). Partial downloads
are kept: they are how an interrupted pull resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from oci.jsonsafe import loads
from oci.mediatypes import IMAGE_CONFIGS

from .build.cache import BuildCache
from .run.containers import Containers
from .store.content_store import ContentStore
from .store.image import Image, ImageError, is_index, reachable
from .unpack.layer_store import LayerStore, force_rmtree


@dataclass
class Collected:
    blobs: int = 0
    bytes: int = 0
    layers: int = 0
    layer_bytes: int = 0
    cache_entries: int = 0


def _live_images(store: ContentStore, live: set[str]) -> list[Image]:
    images = []
    for digest in live:
        try:
            document = loads(store.read(digest))  # bounded depth: a registry wrote these bytes
        except (ValueError, UnicodeDecodeError):
            continue  # a layer
        if not isinstance(document, dict) or is_index(document) or "layers" not in document:
            continue  # an index or an image config: only manifests name a rootfs
        config_digest = (document.get("config") or {}).get("digest", "")
        if config_digest and store.has(config_digest):
            try:
                config = loads(store.read(config_digest))
            except ValueError:
                config = {}
            images.append(Image(digest, document, config if isinstance(config, dict) else {}))
    return images


def _artifact_layers(store: ContentStore, live: set[str]) -> set[str]:
    """The layer-store keys of the artifacts a tag keeps (their files, for ``run --mount``)."""
    from .artifact.mounts import artifact_keys

    keys: set[str] = set()
    for digest in live:
        try:
            document = loads(store.read(digest))
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(document, dict) or is_index(document) or "layers" not in document:
            continue
        if (document.get("config") or {}).get("mediaType") not in IMAGE_CONFIGS:
            keys.update(artifact_keys(document))
    return keys


def collect_garbage(store: ContentStore, build_cache: bool = True) -> Collected:
    """``build_cache``: keep what ``pier build``'s cache names (else the cache is emptied first)."""
    result = Collected()
    with store.lock(exclusive=True):
        cache = BuildCache(store.root)
        if not build_cache:
            result.cache_entries = cache.clear()
        cached_blobs, cached_layers = cache.kept()
        live: set[str] = set(cached_blobs)
        for _, _, digest in store.refs():
            live.update(reachable(store, digest))
        documents = {
            d for d in live if d not in cached_blobs and store.path(d).stat().st_size <= 4 * 1024 * 1024
        }
        used = Containers(store.root).layers_in_use() | cached_layers
        used.update(_artifact_layers(store, documents))
        for image in _live_images(store, documents):
            try:
                used.update(image.diff_ids)
            except ImageError:
                continue  # an image no layer of the store was unpacked for
        for digest in list(store.blobs()):
            if digest not in live:
                result.bytes += store.path(digest).stat().st_size
                store.delete(digest)
                result.blobs += 1
        layers = LayerStore(store.root)
        layers.clean_leftovers()
        for diff_id in layers.all():
            if diff_id not in used:
                info = layers.info(diff_id)
                if layers.remove(diff_id):
                    result.layers += 1
                    result.layer_bytes += info.size if info else 0
        _remove_legacy_trees(store)
    return result


def _remove_legacy_trees(store: ContentStore) -> None:
    """Whole-image trees of pier before the layer store, but those a container still mounts."""
    legacy = store.root / "rootfs"
    if not legacy.is_dir():
        return
    mounted = {state.chain_id for _, state in Containers(store.root).all() if not state.layers}
    for tree in legacy.iterdir():
        algorithm, _, hexpart = tree.name.partition("-")
        if f"{algorithm}:{hexpart}" not in mounted:
            force_rmtree(tree)
