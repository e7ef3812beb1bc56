"""Root filesystems: an image's layers applied in order, and a cache of the result.

Unpacking is the slow part of starting a container, so each image's rootfs is unpacked
once into ``<home>/rootfs/<chain-id>`` and shared, read-only, by every container of
that image (each container writes to its own overlay upper directory). The key is the
image-spec ChainID of the layers, so two manifests with the same layers share one tree.
A tree is unpacked under a temporary name and renamed into place when complete: an
interrupted unpack never leaves a half rootfs that looks ready.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from .content_store import ContentStore
from .image import Image
from .unpack import apply_layer

LayerProgress = Callable[[str, int, int], None]  # (layer digest, index, count)


def unpack_image(
    store: ContentStore, image: Image, dest: Path, progress: LayerProgress | None = None
) -> None:
    """Apply every layer of ``image`` on top of ``dest`` (created if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    layers = image.layers
    for number, layer in enumerate(layers, 1):
        if progress is not None:
            progress(layer["digest"], number, len(layers))
        with store.path(layer["digest"]).open("rb") as stream:
            apply_layer(dest, stream, layer["mediaType"], layer["digest"])


class RootfsCache:
    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self.root = store.root / "rootfs"

    def path(self, chain_id: str) -> Path:
        algorithm, _, hexpart = chain_id.partition(":")
        return self.root / f"{algorithm}-{hexpart}"

    def cached(self, image: Image) -> Path | None:
        path = self.path(image.chain_id)
        return path if path.is_dir() else None

    def prepare(self, image: Image, progress: LayerProgress | None = None) -> tuple[Path, bool]:
        """(the image's unpacked rootfs, whether it had to be unpacked now)."""
        target = self.path(image.chain_id)
        if target.is_dir():
            return target, False
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".unpacking-{uuid.uuid4().hex}"
        try:
            unpack_image(self.store, image, temporary, progress)
            try:
                os.rename(temporary, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(temporary)  # another process finished the same tree first
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return target, True

    def remove(self, chain_id: str) -> bool:
        path = self.path(chain_id)
        if not path.is_dir():
            return False
        doomed = self.root / f".removing-{uuid.uuid4().hex}"
        os.rename(path, doomed)  # gone at once for readers, then deleted at leisure
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def clean_leftovers(self) -> None:
        """Trees left by an unpack or removal that was killed halfway."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith((".unpacking-", ".removing-")):
                shutil.rmtree(entry, ignore_errors=True)
