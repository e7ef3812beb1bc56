"""Where ``pier load`` reads from: a directory, or a tar file (plain or compressed).

Both answer ``open(name)`` for a path relative to their top, so the OCI layout and
docker archive readers do not care which one they have. A tar file is never extracted:
members are read in place, and a name that is not a regular file (or a link to one
inside the archive) is simply missing, so no entry of a hostile archive reaches disk.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import PierError

MAX_MEMBERS = 200_000  # a docker save of a thousand-layer image has a few thousand


class SourceError(PierError):
    pass


# What a broken or truncated archive raises while it is read (a .tar.gz's CRC, a .tar.xz's data).
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


class Source(Protocol):
    label: str

    def open(self, name: str) -> BinaryIO:
        """The file ``name`` (relative, '/'-separated); FileNotFoundError when there is none."""
        ...

    def close(self) -> None: ...


class DirectorySource:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.label = str(directory)

    def open(self, name: str) -> BinaryIO:
        path = self.directory / _normal(name)  # a name from manifest.json stays below the directory
        if not path.is_file():
            raise FileNotFoundError(name)
        return path.open("rb")

    def close(self) -> None:
        pass


class TarSource:
    def __init__(self, path: Path, label: str | None = None) -> None:
        self.label = label or str(path)
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 (open until close())
        except ARCHIVE_ERRORS:
            raise SourceError(
                f"{self.label} is neither an OCI image layout nor a docker archive: "
                "not a directory or a tar file"
            ) from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for count, member in enumerate(self.tar):
                if count >= MAX_MEMBERS:
                    raise SourceError(f"{self.label}: more than {MAX_MEMBERS} entries")
                if member.isfile() or member.issym() or member.islnk():
                    self.members[_normal(member.name)] = member
        except ARCHIVE_ERRORS as exc:
            self.tar.close()
            raise SourceError(f"{self.label} is a damaged tar file: {exc}") from None

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(_normal(name))
        if member is None:
            raise FileNotFoundError(name)
        try:
            stream = self.tar.extractfile(member)  # links resolve to earlier members of the archive
        except (KeyError, tarfile.StreamError):
            stream = None
        if stream is None:
            raise FileNotFoundError(name)
        return stream  # type: ignore[return-value]  # typeshed: IO[bytes]; it is a BufferedReader

    def close(self) -> None:
        self.tar.close()


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def open_source(path: Path, label: str | None = None) -> Source:
    """A directory or a tar file; one readable line when ``path`` is neither. ``label`` names it in errors."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir():
        return DirectorySource(path)
    return TarSource(path, label)


def read_small(source: Source, name: str, limit: int) -> bytes | None:
    """All of ``name`` if it is at most ``limit`` bytes; None when it is missing."""
    try:
        stream = source.open(name)
    except FileNotFoundError:
        return None
    with stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{source.label}: {name} is larger than {limit} bytes")
    return data
