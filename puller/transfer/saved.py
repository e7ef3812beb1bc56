"""``pier save`` and ``pier load``: which format, from the path given and from what is in it.

``pier save -o DIR`` writes an OCI image layout directory; ``-o NAME.tar`` (or
``--format docker-archive``) a tar that docker, skopeo and pier read (see
``docker_archive``). ``pier load`` takes any of them: a layout directory, a layout in a
tar, or a ``docker save`` tar, and tells which it could not read, in one line.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..reference import Reference
from ..store.content_store import ContentStore
from ..store.platforms import Platform
from .docker_archive import load_archive, save_archive, write_archive
from .oci_layout import MAX_INDEX_SIZE, LayoutError, Loaded, is_layout, load_layout, save
from .sources import ARCHIVE_ERRORS, open_source, read_small


def save_images(
    store: ContentStore, images: list[tuple[Reference, str]], path: Path, format: str, platform: Platform
) -> None:
    if format == "oci-dir":
        save(store, images, path)
    else:
        save_archive(store, images, path, platform, docker=format == "docker-archive")


def save_to_stream(
    store: ContentStore, images: list[tuple[Reference, str]], out: BinaryIO, format: str, platform: Platform
) -> None:
    """``pier save IMG > x.tar``: the tar written to a pipe or file the shell opened."""
    if format == "oci-dir":
        raise LayoutError("a layout directory cannot go to standard output: give -o DIR")
    write_archive(store, images, out, platform, docker=format == "docker-archive")


def load_from_stream(store: ContentStore, stream: BinaryIO, repository: str | None = None) -> list[Loaded]:
    """``pier load < x.tar``: the tar is kept beside the store while it is read (it needs seeking)."""
    with tempfile.NamedTemporaryFile(dir=store.root, prefix=".load-", suffix=".tar") as spool:
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.flush()
        return load_images(store, Path(spool.name), repository, "standard input")


def load_images(
    store: ContentStore, path: Path, repository: str | None = None, label: str | None = None
) -> list[Loaded]:
    """Import the images at ``path``: an OCI layout (directory or tar) first, else a docker archive."""
    source = open_source(path, label)
    try:
        if is_layout(source):
            loaded = load_layout(store, source, repository)
        elif read_small(source, "manifest.json", MAX_INDEX_SIZE) is not None:
            loaded = load_archive(store, source, repository)
        else:
            raise LayoutError(
                f"{source.label} is not an OCI image layout (no oci-layout) nor a docker archive "
                "(no manifest.json)"
            )
        if not loaded:
            raise LayoutError(f"{source.label} holds no image: its index.json or manifest.json lists none")
        return loaded
    except ARCHIVE_ERRORS as exc:
        raise LayoutError(f"{source.label} is a damaged archive: {exc}") from None
    finally:
        source.close()
