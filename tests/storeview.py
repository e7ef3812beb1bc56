"""Where a test server keeps its data, and what a test may look at there, on either backend.

A ``Storage`` names a location (``--root``), the environment the server needs for it, and
a read-only view of the stored files by layout path, so assertions about what was (not)
stored read the same on the filesystem and on S3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from registry import layout
from registry.references import Digest


@dataclass
class Storage:
    location: str
    env: dict[str, str] = field(default_factory=dict)

    def files(self, under: str = "") -> dict[str, int]:
        """Every stored file below ``under`` and its size (the backend's hidden files too)."""
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        return path in self.files(path)

    def incomplete_writes(self) -> list[str]:
        """What writers killed mid-write left behind, invisible to readers."""
        raise NotImplementedError


class LocalStorage(Storage):
    @property
    def root(self) -> Path:
        return Path(self.location)

    def files(self, under: str = "") -> dict[str, int]:
        base = self.root / under if under else self.root
        if base.is_file():
            return {under: base.stat().st_size}
        if not base.is_dir():
            return {}
        return {str(p.relative_to(self.root)): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def incomplete_writes(self) -> list[str]:
        return [path for path in self.files() if path.rsplit("/", 1)[-1].startswith(".tmp-")]

    def write(self, path: str, data: bytes) -> None:
        (self.root / path).write_bytes(data)


class S3Storage(Storage):
    def __init__(self, location: str, env: dict[str, str], client) -> None:
        super().__init__(location, env)
        self.bucket, _, prefix = location.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix else ""
        self.client = client

    def files(self, under: str = "") -> dict[str, int]:
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + under
        ):
            for item in page.get("Contents", []):
                path = item["Key"][len(self.prefix) :]
                if not under or path == under or path.startswith(under.rstrip("/") + "/"):
                    found[path] = item["Size"]
        return found

    def incomplete_writes(self) -> list[str]:
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return [upload["Key"] for upload in uploads.get("Uploads", [])]

    def read(self, path: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + path)["Body"].read()

    def write(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + path, Body=data)


def blob_data_path(digest: str) -> str:
    """Where the registry stores a blob: the layout's own answer, not a copy of it."""
    return layout.blob_data(Digest.parse(digest))
