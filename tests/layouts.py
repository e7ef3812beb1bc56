"""Comparing OCI image layouts after a round trip through a registry."""

from __future__ import annotations

from pathlib import Path

from .images import layout_blobs, resolve_tag


def assert_same_layout_content(original: Path, copy: Path, tag: str) -> None:
    """``tag`` names the same manifest in both layouts, and every blob has the same bytes."""
    want, got = resolve_tag(original, tag), resolve_tag(copy, tag)
    for field in ("mediaType", "digest", "size"):
        assert got[field] == want[field], f"{field} of {tag} changed in the round trip"
    original_blobs, copied_blobs = layout_blobs(original), layout_blobs(copy)
    assert sorted(copied_blobs) == sorted(original_blobs), "the pulled layout holds other blobs"
    for digest, content in original_blobs.items():
        assert copied_blobs[digest] == content, f"{digest} differs after the round trip"
