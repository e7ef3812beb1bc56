"""What ``pier save`` can write, apart from the code that writes it (the parser needs only the names)."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("oci-dir", "oci-archive", "docker-archive")


def output_format(path: Path, requested: str | None) -> str:
    """The format asked for; else a tar for a new name ending in .tar, a layout directory otherwise."""
    if requested:
        return requested
    return "docker-archive" if path.name.endswith(".tar") and not path.is_dir() else "oci-dir"
