"""Root filesystems: an image's layers applied in order, and a cache of the result.

Unpacking is the slow part of starting a container, so each image's rootfs is unpacked
once into ``<home>/rootfs/<chain-id>`` and shared, read-only, by every container of
that image (each container writes to its own overlay upper directory). The key is the
image-spec ChainID of the layers, so two manifests with the same layers share one tree.
A tree is unpacked under a temporary name and renamed into place when complete: an
interrupted unpack never leaves a half rootfs that looks ready. ``pier unpack`` into a
directory of the user's choice follows the same rule: a failed unpack (a limit of
``unpack_limits``, a broken layer, Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..store.content_store import ContentStore
from ..store.image import Image, ImageError
from .layers import apply_layer
from .limits import UnpackBudget, UnpackLimits

LayerProgress = Callable[[str, int, int], None]  # (layer digest, index, count)


def _apply_layers(
    store: ContentStore, image: Image, dest: Path, budget: UnpackBudget, progress: LayerProgress | None
) -> None:
    """Apply every layer of ``image`` on top of ``dest`` (created if missing), all within one budget."""
    dest.mkdir(parents=True, exist_ok=True)
    layers = image.layers
    for number, layer in enumerate(layers, 1):
        if progress is not None:
            progress(layer["digest"], number, len(layers))
        with store.path(layer["digest"]).open("rb") as stream:
            apply_layer(dest, stream, layer["mediaType"], layer["digest"], budget)


def _force_rmtree(path: Path) -> None:
    """Delete a tree even where the image made directories read-only (as a non-root user)."""

    def writable_and_retry(function: Callable[[str], object], name: str, _: object) -> None:
        with contextlib.suppress(OSError):  # cleanup must not hide the error that caused it
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    with contextlib.suppress(OSError):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, onerror=writable_and_retry)


def unpack_image(
    store: ContentStore,
    image: Image,
    dest: Path,
    progress: LayerProgress | None = None,
    limits: UnpackLimits | None = None,
) -> None:
    """Write ``image``'s root filesystem into ``dest``, a new or empty directory: all of it, or nothing.

    A new directory is unpacked beside it under a temporary name and renamed when complete;
    an existing empty one (maybe a mount point, which cannot be renamed onto) is emptied
    again on failure. ``limits`` default to those set in the environment.
    """
    dest = Path(dest)
    budget = UnpackBudget(limits if limits is not None else UnpackLimits.from_env(), dest)
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or any(dest.iterdir()):
            raise ImageError(f"{dest} is not an empty directory: unpack into a new one")
        try:
            _apply_layers(store, image, dest, budget, progress)
        except BaseException:
            for child in dest.iterdir():
                _force_rmtree(child)
            raise
        return
    temporary = dest.parent / f".{dest.name}.unpacking-{uuid.uuid4().hex}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
    except OSError as exc:
        raise ImageError(f"cannot create {dest}: {exc.strerror}") from exc
    try:
        _apply_layers(store, image, temporary, budget, progress)
        os.rename(temporary, dest)
    except BaseException:
        _force_rmtree(temporary)
        raise


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
            budget = UnpackBudget(UnpackLimits.from_env(), self.root)
            _apply_layers(self.store, image, temporary, budget, progress)
            try:
                os.rename(temporary, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(temporary)  # another process finished the same tree first
        except BaseException:
            _force_rmtree(temporary)
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
