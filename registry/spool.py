"""A cold blob on local disk, between the mirror's download and a slower store.

A mirror caching to S3 can upload no faster than the S3 server takes parts (SeaweedFS on a
small machine: about 100 MB/s), while the upstream may send ten times that. Written straight
to the store, the blob would hold the first client to the upload's pace. Written to a spool
file first (a local temporary file, already unlinked), the download and its clients go at
the upstream's speed, and the upload follows from the spool at its own.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile

from storage_backends import FileWriter


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class SpoolRoom:
    """The room this process's spools have claimed in $TMPDIR.

    A blob is spooled only when all of it fits beside the other spools' claims and a reserve
    (a tenth of the disk, at most 256 MiB); else it goes straight to the store, at the
    upload's pace. So cold pulls, anonymous ones included, cannot fill the spool's disk.
    Each server process counts its own claims.
    """

    RESERVE = 256 * 1024 * 1024

    def __init__(self) -> None:
        self.claimed = 0

    def claim(self, size: int | None) -> bool:
        if size is None:  # no Content-Length: its room cannot be known in advance
            return False
        try:
            usage = shutil.disk_usage(tempfile.gettempdir())
        except OSError:
            return False
        if usage.free - self.claimed - min(self.RESERVE, usage.total // 10) < size:
            return False
        self.claimed += size
        return True

    def release(self, size: int) -> None:
        self.claimed -= size


class SpoolFull(OSError):
    """The spool's disk ($TMPDIR) is full: not the store, which may have room."""


class Spool:
    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="pier-mirror-spool-")  # noqa: SIM115 - closed by close()
        self.size = 0  # bytes written so far, readable by the upload
        self._finished = False
        self._grown = asyncio.Event()

    async def write(self, piece: bytes | memoryview) -> None:
        """The next piece (called in order: a ``Lane`` of the download)."""
        try:
            await asyncio.to_thread(_pwrite_all, self._file.fileno(), piece, self.size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"no space for the spool in {tempfile.gettempdir()}") from None
            raise
        self.size += len(piece)
        self._wake()

    def finish(self) -> None:
        """Every byte is written: the upload may end when it has them."""
        self._finished = True
        self._wake()

    def _wake(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    async def upload(self, writer: FileWriter, piece_size: int) -> None:
        """Copy the spool to ``writer`` as it grows, until it is finished and copied."""
        offset = 0
        while True:
            grown = self._grown
            if offset < self.size:
                count = min(piece_size, self.size - offset)
                data = await asyncio.to_thread(os.pread, self._file.fileno(), count, offset)
                if len(data) != count:
                    raise OSError(f"spool read {len(data)} of {count} bytes at {offset}")
                await writer.write(data)
                offset += count
            elif self._finished:
                return
            else:
                await grown.wait()

    def close(self) -> None:
        self._file.close()
