"""The storage driver a set of settings names: one place for ``serve``, ``gc`` and ``fsck``."""

from __future__ import annotations

from typing import Any

from storage_backends import StorageDriver, open_storage, storage_scheme

from .config import Settings


def backend_options(settings: Settings) -> dict[str, Any]:
    """The settings of the backend ``settings.root`` names: those prefixed with its scheme,
    without the prefix (``s3_part_size`` is the S3 backend's ``part_size``)."""
    prefix = f"{storage_scheme(settings.root)}_"
    return {
        name.removeprefix(prefix): value for name, value in vars(settings).items() if name.startswith(prefix)
    }


def open_driver(settings: Settings, wait: float = 0.0) -> StorageDriver:
    """A local folder, or ``s3://BUCKET/PREFIX`` with boto3's standard settings, or any
    other registered backend.

    ``wait``: seconds to wait for remote storage (S3, or its bucket) to appear before giving up.
    """
    return open_storage(settings.root, fsync=settings.fsync, wait=wait, **backend_options(settings))
