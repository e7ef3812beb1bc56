"""Repository names, tags and digests as the server checks them: ``oci``'s grammars, the
spec's error codes.

Everything that later becomes part of a storage path passes through here first, so
traversal through a name, tag or digest is impossible by construction.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Self

from oci import digest
from oci.digest import ALGORITHMS, DigestError
from oci.reference import MAX_NAME_LENGTH, is_repository_name, is_tag

from .errors import RegistryError

__all__ = [
    "ALGORITHMS",
    "Digest",
    "is_digest",
    "lookup_reference",
    "new_hasher",
    "validate_name",
    "validate_tag",
]


if TYPE_CHECKING:
    # To the type checker the server's digest is oci's: the class below adds no state, only
    # how ``parse`` fails, so the digests of ``oci.manifest``'s descriptors are the same type.
    Digest = digest.Digest
else:

    class Digest(digest.Digest):
        """``oci``'s digest (equal to it by value), whose ``parse`` fails as ``DIGEST_INVALID``."""

        @classmethod
        def parse(cls, value: str) -> Self:
            try:
                return super().parse(value)
            except DigestError as exc:
                raise RegistryError("DIGEST_INVALID", str(exc)) from None


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is meant as a digest (a tag has no ``:``)."""
    return ":" in reference


def new_hasher(algorithm: str) -> hashlib._Hash:
    try:
        return digest.new_hasher(algorithm)
    except DigestError as exc:
        raise RegistryError("DIGEST_INVALID", str(exc)) from None


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError("NAME_INVALID", f"repository name longer than {MAX_NAME_LENGTH} characters")
    if not is_repository_name(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name: {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise RegistryError("TAG_INVALID", f"invalid tag: {tag[:200]!r}")
    return tag


def lookup_reference(reference: str) -> Digest | str:
    """A manifest reference to read or delete: a digest, or a tag.

    One that is neither cannot name anything stored, so it is unknown (404
    ``MANIFEST_UNKNOWN``, as distribution, zot and the spec's conformance suite have it), not
    a bad request: only a write of a manifest answers ``TAG_INVALID``.
    """
    try:
        return Digest.parse(reference) if is_digest(reference) else validate_tag(reference)
    except RegistryError:
        raise RegistryError("MANIFEST_UNKNOWN", f"not a tag or digest: {reference[:200]!r}") from None
