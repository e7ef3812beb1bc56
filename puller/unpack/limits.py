"""Bounds on what unpacking an image may take: bytes and entries per layer and per image, and disk space.

A layer is untrusted input: 10 MB of gzip can expand to terabytes, a tar header can lie
about sizes, and a full disk breaks every other program on the machine. So bytes are
counted as the decompressor yields them (no header can hide any), entries as the tar
reader yields them, and the target's free space (``statvfs``) is checked before anything
is written, keeping a margin. The defaults let a 30 GB CUDA/PyTorch image through with
room to spare; each limit has an environment variable to raise it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from oci.units import exact_size, parse_size

from ..errors import PierError
from ..text import human_size

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
REFRESH_BYTES = 64 * MB  # statvfs again after this much, in case others write to the same disk
# tarfile holds a member's headers (PAX records, GNU long names, sparse maps) in memory:
# names are at most PATH_MAX and xattr values 64 KiB, so anything near this is an attack.
MAX_HEADER_BYTES = 8 << 20
INODE_MARGIN = 10_000  # files that stay creatable on the target, or 5% of its inodes if fewer


class UnpackLimitError(PierError):
    """An unpack stopped by one of its limits; the message names the limit and how to raise it."""


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


@dataclass(frozen=True)
class _Limit:
    """What a limit is, besides its default: its variable, whether it is a size, and the
    README's words for what it bounds (and for a default that is not a plain value)."""

    env: str
    bounds: str
    size: bool
    default_doc: str = ""


def _limit(default: int | None, env: str, bounds: str, *, size: bool, default_doc: str = "") -> Any:
    """A field of ``UnpackLimits`` (Any, as ``dataclasses.field`` is, to fit its annotation)."""
    return field(default=default, metadata={"limit": _Limit(env, bounds, size, default_doc)})


@dataclass(frozen=True)
class UnpackLimits:
    """Ceilings of one unpack, each declared once: default, ``PIER_UNPACK_*`` variable, README text.
    ``min_free`` None keeps 1 GB or 5% of the file system, whichever is less."""

    max_bytes: int = _limit(
        256 * GB, "PIER_UNPACK_MAX_BYTES", "uncompressed tar bytes of all layers of one image", size=True
    )
    max_entries: int = _limit(
        2_000_000, "PIER_UNPACK_MAX_ENTRIES", "tar entries of all layers of one image", size=False
    )
    max_layer_bytes: int = _limit(
        128 * GB, "PIER_UNPACK_MAX_LAYER_BYTES", "uncompressed tar bytes of one layer", size=True
    )
    max_layer_entries: int = _limit(
        1_000_000, "PIER_UNPACK_MAX_LAYER_ENTRIES", "tar entries of one layer", size=False
    )
    min_free: int | None = _limit(
        None,
        "PIER_UNPACK_MIN_FREE",
        "free space left on the target's file system",
        size=True,
        default_doc="1 GB or 5% of the file system, whichever is less",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> UnpackLimits:
        """The defaults, with each ``PIER_UNPACK_*`` variable that is set taking its place."""
        values: dict[str, int] = {}
        for name, limit in LIMITS.items():
            text = environ.get(limit.env, "").strip()
            if not text:
                continue
            try:
                value = parse_size(text) if limit.size else _count(text)
            except ValueError:
                raise PierError(
                    f"{limit.env}={text!r}: expected a number"
                    + (" or a size like 64MB" if limit.size else "")
                ) from None
            values[name] = value
        return cls(**values)


LIMITS: dict[str, _Limit] = {f.name: f.metadata["limit"] for f in fields(UnpackLimits)}
ENVIRONMENT = {name: limit.env for name, limit in LIMITS.items()}


def markdown_table() -> str:
    """The README's table of the limits (``python -m puller.unpack.limits`` prints it)."""
    rows = ["| Variable | Default | Bounds |", "|---|---|---|"]
    defaults = UnpackLimits()
    for name, limit in LIMITS.items():
        value = getattr(defaults, name)
        default = limit.default_doc or f"`{exact_size(value) if limit.size else value}`"
        rows.append(f"| `{limit.env}` | {default} | {limit.bounds} |")
    return "\n".join(rows) + "\n"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: where the unpacked bytes will land."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class FreeSpace:
    """The room left on the target's file system above the margin, checked before each write."""

    def __init__(self, target: Path, min_free: int | None) -> None:
        self.target = target  # as the user named it, for messages
        self.path = _existing(target)
        self.min_free = min_free
        self._refresh()

    def _refresh(self) -> None:
        info = os.statvfs(self.path)
        self.block = info.f_frsize or 4096
        size = info.f_blocks * info.f_frsize
        self.margin = self.min_free if self.min_free is not None else min(GB, size // 20)
        self.free = info.f_bavail * info.f_frsize
        self.left = self.free - self.margin
        self.since = 0
        # Files need inodes too; some file systems (btrfs) have no fixed count and report 0.
        self.inode_margin = min(INODE_MARGIN, info.f_files // 20)
        self.inodes = info.f_favail
        self.inodes_left = info.f_favail - self.inode_margin if info.f_files else None

    def take(self, size: int) -> None:
        """Account ``size`` bytes to be written (a block at least) and an inode; refuse past the margin."""
        needed = -(-max(size, 1) // self.block) * self.block
        short_of_inodes = self.inodes_left is not None and self.inodes_left < 1
        if needed > self.left or self.since >= REFRESH_BYTES or short_of_inodes:
            self._refresh()
            if needed > self.left:
                free, needed_, margin = human_size(self.free), human_size(needed), human_size(self.margin)
                raise UnpackLimitError(
                    f"not enough free space to unpack into {self.target}: {free} free, writing "
                    f"{needed_} more would leave less than {margin} "
                    f"(set {ENVIRONMENT['min_free']} to change that margin)"
                )
            if self.inodes_left is not None and self.inodes_left < 1:
                raise UnpackLimitError(
                    f"not enough free inodes to unpack into {self.target}: {self.inodes} left, and "
                    f"{self.inode_margin} are kept free (make room on that file system, or unpack elsewhere)"
                )
        self.left -= needed
        self.since += needed
        if self.inodes_left is not None:
            self.inodes_left -= 1


class UnpackBudget:
    """What one image's unpack may still take; its layers share it, in order."""

    def __init__(self, limits: UnpackLimits, target: Path) -> None:
        self.limits = limits
        self.space = FreeSpace(target, limits.min_free)
        self.bytes = self.entries = 0
        self.layer = ""
        self.layer_bytes = self.layer_entries = 0
        self.header_left: int | None = None  # bytes a header may still take, while one is read

    def start_layer(self, layer: str) -> None:
        self.layer = layer
        self.layer_bytes = self.layer_entries = 0

    def counted(self, stream: BinaryIO) -> BinaryIO:
        """``stream`` (a layer's decompressed tar), stopping once it yields more than allowed."""
        self.start_header()  # a tar starts with one
        return _Counted(stream, self)  # type: ignore[return-value]  # tarfile only calls read()

    def start_header(self) -> None:
        """The bytes read from now on are one member's headers: at most ``MAX_HEADER_BYTES``."""
        self.header_left = MAX_HEADER_BYTES

    def end_header(self) -> None:
        self.header_left = None

    def add_bytes(self, count: int) -> None:
        if self.header_left is not None:
            self.header_left -= count
            if self.header_left < 0:
                raise UnpackLimitError(
                    f"layer {self.layer}: a tar header (PAX records, long name or sparse map) "
                    f"of more than {human_size(MAX_HEADER_BYTES)}: refused"
                )
        self.bytes += count
        self.layer_bytes += count
        limits = self.limits
        if self.layer_bytes > limits.max_layer_bytes:
            self._exceeded(f"{human_size(limits.max_layer_bytes)} of uncompressed data", "max_layer_bytes")
        if self.bytes > limits.max_bytes:
            self._exceeded(f"{human_size(limits.max_bytes)} of uncompressed data", "max_bytes")

    def add_entry(self) -> None:
        self.entries += 1
        self.layer_entries += 1
        if self.layer_entries > self.limits.max_layer_entries:
            self._exceeded(f"{self.limits.max_layer_entries} entries", "max_layer_entries")
        if self.entries > self.limits.max_entries:
            self._exceeded(f"{self.limits.max_entries} entries", "max_entries")

    def _exceeded(self, what: str, field: str) -> None:
        scope = "layer" if field.startswith("max_layer") else "image"
        raise UnpackLimitError(
            f"layer {self.layer}: unpack stopped at more than {what} per {scope} "
            f"(raise the limit with {ENVIRONMENT[field]})"
        )


class _Counted:
    """A read-only stream that charges every byte it yields to a budget."""

    def __init__(self, stream: BinaryIO, budget: UnpackBudget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._budget.add_bytes(len(data))
        return data


if __name__ == "__main__":
    print(markdown_table(), end="")
