"""The storage driver a set of settings names: one place for ``serve``, ``gc`` and ``fsck``."""

from __future__ import annotations

from storage_backends import StorageDriver, open_storage

from .config import Settings


def open_driver(settings: Settings) -> StorageDriver:
    """A local folder, or ``s3://BUCKET/PREFIX`` with boto3's standard settings."""
    return open_storage(settings.root, fsync=settings.fsync)
