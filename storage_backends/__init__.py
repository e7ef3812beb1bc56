"""Storage backends for pier: one small interface, one implementation per medium."""

from typing import Any

from .base import (
    FileInfo,
    FileWriter,
    InvalidPath,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageError,
    StorageFull,
    WriterBusy,
)
from .filesystem import FilesystemDriver

__all__ = [
    "FileInfo",
    "FileWriter",
    "FilesystemDriver",
    "InvalidPath",
    "PathNotFound",
    "ShortWrite",
    "StorageDriver",
    "StorageError",
    "StorageFull",
    "WriterBusy",
    "open_storage",
]


def open_storage(location: str, *, fsync: bool = True, **s3_options: Any) -> StorageDriver:
    """Pick the backend for a ``--root`` value: a local folder, or ``s3://BUCKET/PREFIX``.

    ``s3_options`` go to ``S3Driver`` (endpoint_url, region, addressing_style, part_size);
    what they leave unset comes from boto3's own chain (``AWS_*`` variables, ~/.aws).
    """
    if location.startswith("s3://"):
        from .s3 import S3Driver  # boto3 takes a while to import: only when asked for

        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {location!r}: use s3://BUCKET or s3://BUCKET/PREFIX")
        wait = s3_options.pop("wait", 0.0)
        driver = S3Driver(bucket, prefix, **s3_options)
        driver.check_bucket(wait)
        return driver
    if "://" in location and not location.startswith("file://"):
        scheme = location.split("://", 1)[0]
        raise ValueError(f"unsupported storage location {location!r}: no {scheme!r} backend")
    return FilesystemDriver(location.removeprefix("file://"), fsync=fsync)
