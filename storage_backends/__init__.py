"""Storage backends for pier: one small interface, one implementation per medium."""

from .base import (
    FileInfo,
    FileWriter,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
    WriterBusy,
)
from .filesystem import FilesystemDriver

__all__ = [
    "FileInfo",
    "FileWriter",
    "FilesystemDriver",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "StorageError",
    "WriterBusy",
    "open_storage",
]


def open_storage(location: str, *, fsync: bool = True) -> StorageDriver:
    """Pick the backend for a ``--root`` value (a local folder for now)."""
    if "://" in location and not location.startswith("file://"):
        scheme = location.split("://", 1)[0]
        raise ValueError(f"unsupported storage location {location!r}: no {scheme!r} backend")
    return FilesystemDriver(location.removeprefix("file://"), fsync=fsync)
