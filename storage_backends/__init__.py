"""Storage backends for pier: one small interface, one implementation per medium.

Adding a backend is writing one driver module (a ``StorageDriver`` and its
``open_location``, see ``Opener``), naming it in ``BACKENDS`` below, and passing the
shared contract tests, which run on every backend named there. ``registry.backend``
hands each backend the server settings named after its scheme (``s3_part_size`` as
``part_size``); nothing else in the registry knows which backends exist.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from .base import (
    FileInfo,
    FileWriter,
    InvalidPath,
    Opener,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageError,
    StorageFull,
    WriterBusy,
)
from .filesystem import FilesystemDriver

__all__ = [
    "BACKENDS",
    "FileInfo",
    "FileWriter",
    "FilesystemDriver",
    "InvalidPath",
    "Opener",
    "PathNotFound",
    "ShortWrite",
    "StorageDriver",
    "StorageError",
    "StorageFull",
    "WriterBusy",
    "backend_opener",
    "open_storage",
    "storage_scheme",
]

# Every backend, by the scheme of its ``--root`` (``<scheme>://<location>``): the module
# that implements it, imported only when a location names it (boto3 takes a while).
BACKENDS: dict[str, str] = {
    "file": "storage_backends.filesystem",  # a local folder: /srv/pier, or file:///srv/pier
    "s3": "storage_backends.s3",  # s3://BUCKET or s3://BUCKET/PREFIX
}
DEFAULT_SCHEME = "file"  # a ``--root`` without ``scheme://`` is a local folder


def storage_scheme(location: str) -> str:
    """The scheme a ``--root`` value names its backend by."""
    scheme, found, _ = location.partition("://")
    return scheme if found else DEFAULT_SCHEME


def backend_opener(scheme: str) -> Opener:
    """The ``open_location`` of the backend registered for ``scheme``."""
    module = BACKENDS.get(scheme)
    if module is None:
        raise ValueError(f"no {scheme!r} storage backend: known schemes are {', '.join(sorted(BACKENDS))}")
    return cast(Opener, importlib.import_module(module).open_location)  # the module's contract


def open_storage(location: str, *, fsync: bool = True, wait: float = 0.0, **options: Any) -> StorageDriver:
    """The driver for a ``--root`` value: a local folder, ``s3://BUCKET/PREFIX``, ...

    ``fsync``: make writes durable before they count (where the medium lets the backend
    choose); ``wait``: seconds to wait for a remote store to appear. ``options`` are the
    backend's own (for S3: endpoint_url, region, addressing_style, part_size; what they
    leave unset comes from boto3's own chain, ``AWS_*`` variables and ~/.aws).
    """
    scheme = storage_scheme(location)
    if scheme not in BACKENDS:
        raise ValueError(f"unsupported storage location {location!r}: no {scheme!r} backend")
    return backend_opener(scheme)(location.removeprefix(f"{scheme}://"), fsync=fsync, wait=wait, **options)
