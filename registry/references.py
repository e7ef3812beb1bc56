"""Repository names, tags and digests, parsed strictly against the spec's grammars.

Everything that later becomes part of a storage path passes through here first, so
traversal through a name, tag or digest is impossible by construction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import RegistryError

MAX_NAME_LENGTH = 255
NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# Patterns are used with fullmatch: `$` would also accept a trailing newline.
# Algorithms the registry can verify, with the exact length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
DIGEST_PATTERN = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
DIGEST_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse a digest the registry can verify, or fail with ``DIGEST_INVALID``."""
        if not DIGEST_PATTERN.fullmatch(value):
            if DIGEST_GRAMMAR.fullmatch(value) and value.split(":", 1)[0] not in ALGORITHMS:
                raise RegistryError("DIGEST_INVALID", f"unsupported digest algorithm: {value.split(':')[0]}")
            raise RegistryError("DIGEST_INVALID", f"invalid digest: {value[:200]!r}")
        algorithm, hexpart = value.split(":", 1)
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(reference: str) -> bool:
    return ":" in reference


def new_hasher(algorithm: str) -> hashlib._Hash:
    if algorithm not in ALGORITHMS:
        raise RegistryError("DIGEST_INVALID", f"unsupported digest algorithm: {algorithm}")
    return hashlib.new(algorithm)


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError("NAME_INVALID", f"repository name longer than {MAX_NAME_LENGTH} characters")
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name: {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
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
