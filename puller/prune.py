"""Delete what no tag and no container needs any more: blobs, and cached rootfs trees.

Runs under the store's exclusive lock, so it never races a pull (which holds the lock
shared from its first blob until its tag is written) or a container being prepared.
Partial downloads are kept: they are how an interrupted pull resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from oci.jsonsafe import loads

from .run.containers import Containers
from .store.content_store import ContentStore
from .store.image import Image, is_index, reachable
from .unpack.rootfs import RootfsCache


@dataclass
class Collected:
    blobs: int = 0
    bytes: int = 0
    trees: int = 0


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


def collect_garbage(store: ContentStore) -> Collected:
    result = Collected()
    with store.lock(exclusive=True):
        live: set[str] = set()
        for _, _, digest in store.refs():
            live.update(reachable(store, digest))
        documents = {d for d in live if store.path(d).stat().st_size <= 4 * 1024 * 1024}
        chains = {image.chain_id for image in _live_images(store, documents)}
        for digest in list(store.blobs()):
            if digest not in live:
                result.bytes += store.path(digest).stat().st_size
                store.delete(digest)
                result.blobs += 1
        cache = RootfsCache(store)
        cache.clean_leftovers()
        chains |= Containers(store.root).chain_ids_in_use()
        if cache.root.is_dir():
            for tree in cache.root.iterdir():
                algorithm, _, hexpart = tree.name.partition("-")
                if not tree.name.startswith(".") and f"{algorithm}:{hexpart}" not in chains:
                    cache.remove(f"{algorithm}:{hexpart}")
                    result.trees += 1
    return result
