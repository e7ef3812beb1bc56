"""Root filesystems: an image's layers, as directories of the layer store or as one tree.

A container's rootfs is the stack of its image's layer directories (``image_layers``),
each unpacked once and shared by every image that has it. ``pier unpack`` writes one
flat tree into a directory of the user's choice, all of it or nothing: it is unpacked
under a temporary name and renamed when complete, so a failed unpack (a limit of
``unpack_limits``, a broken layer, Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..store.content_store import ContentStore
from ..store.image import Image, ImageError
from .layer_store import LayerStore, force_rmtree, verified
from .layers import apply_layer
from .limits import UnpackBudget, UnpackLimits
from .snapshot import materialize

LayerProgress = Callable[[str, int, int], None]  # (layer digest, index, count)


def _apply_layers(
    store: ContentStore, image: Image, dest: Path, budget: UnpackBudget, progress: LayerProgress | None
) -> None:
    """Apply every layer of ``image`` on top of ``dest`` (created if missing), all within one budget.

    Without the blobs (``PIER_KEEP_LAYER_BLOBS=0``), the unpacked layers are copied instead.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not all(store.has(layer["digest"]) for layer in image.layers):
        materialize(image_layers(store, image, progress), dest)  # says which layer is missing, if one is
        return
    layers = image.layers
    for number, layer in enumerate(layers, 1):
        if progress is not None:
            progress(layer["digest"], number, len(layers))
        with store.path(layer["digest"]).open("rb") as stream:
            apply_layer(dest, stream, layer["mediaType"], layer["digest"], budget)


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
                force_rmtree(child)
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
        force_rmtree(temporary)
        raise


def image_layers(
    store: ContentStore,
    image: Image,
    progress: LayerProgress | None = None,
    limits: UnpackLimits | None = None,
) -> list[Path]:
    """The directories of ``image``'s layers in the layer store, bottom first; missing ones unpacked now.

    A pull unpacks as it downloads; this covers images that came another way (``pier load``,
    a store from before the layer store) and layers a prune removed while their blob stayed.
    """
    layers = LayerStore(store.root)
    descriptors = image.layers
    for number, (descriptor, diff_id) in enumerate(zip(descriptors, image.diff_ids, strict=True), 1):
        if layers.has(diff_id):
            continue
        if progress is not None:
            progress(descriptor["digest"], number, len(descriptors))
        try:
            stream = store.path(descriptor["digest"]).open("rb")
        except FileNotFoundError:
            missing = descriptor["digest"]
            raise ImageError(
                f"layer {missing} is neither unpacked nor in the local store: pull the image again"
            ) from None
        with stream:
            layers.unpack(
                diff_id,
                verified(stream, descriptor["digest"]),
                descriptor["mediaType"],
                descriptor["digest"],
                limits,
            )
    return [layers.path(diff_id) for diff_id in image.diff_ids]


def layers_available(store: ContentStore, image: Image) -> bool:
    """Whether every layer of ``image`` is unpacked or has its blob here (nothing to pull)."""
    layers = LayerStore(store.root)
    return all(
        layers.has(diff_id) or store.has(descriptor["digest"])
        for descriptor, diff_id in zip(image.layers, image.diff_ids, strict=True)
    )
