"""The storage driver a set of settings names: one place for ``serve``, ``gc`` and ``fsck``."""

from __future__ import annotations

from storage_backends import StorageDriver, open_storage

from .config import Settings


def open_driver(settings: Settings, wait: float = 0.0) -> StorageDriver:
    """A local folder, or ``s3://BUCKET/PREFIX`` with boto3's standard settings.

    ``wait``: seconds to wait for S3 (or its bucket) to appear before giving up.
    """
    if not settings.root.startswith("s3://"):
        return open_storage(settings.root, fsync=settings.fsync)
    if settings.s3_addressing_style not in ("auto", "path", "virtual"):
        raise ValueError(
            f"s3_addressing_style must be auto, path or virtual, not {settings.s3_addressing_style!r}"
        )
    return open_storage(
        settings.root,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region or None,
        addressing_style=settings.s3_addressing_style,
        part_size=settings.s3_part_size,
        wait=wait,
    )
