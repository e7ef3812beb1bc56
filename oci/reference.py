"""Repository names, tags and image references: distribution's grammar, written once.

The server validates a repository name and a tag with the component grammars below; the
client parses what a user types (``python:3.12``, ``localhost:5000/x@sha256:...``) with
docker's reference grammar built from the same components, normalised as docker does
(``reference.go`` and ``normalize.go`` of distribution's ``reference`` package):
``python`` is ``docker.io/library/python``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .digest import ALGORITHMS

MAX_NAME_LENGTH = 255  # of a repository name (the path, without the registry's domain)
MAX_TAG_LENGTH = 128

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_HOSTS = frozenset({DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN, DOCKER_HUB_API_HOST})
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"

NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG = rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_TAG_LENGTH - 1}}}"
TAG_PATTERN = re.compile(TAG)

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
# docker's digest grammar in a reference is looser than pier's; the algorithm and the length
# are checked against ``ALGORITHMS`` after the match, for a message that says which is wrong.
_REFERENCE_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{NAME_COMPONENT}(?:/{NAME_COMPONENT})*)"
    rf"(?::(?P<tag>{TAG}))?(?:@(?P<digest>{_REFERENCE_DIGEST}))?",
    re.ASCII,
)


class InvalidReference(ValueError):
    """A name, tag or reference that docker would refuse too; the message says why."""


def is_repository_name(name: str) -> bool:
    """A repository name as the distribution spec has it: components, lowercase, at most 255."""
    return len(name) <= MAX_NAME_LENGTH and NAME_PATTERN.fullmatch(name) is not None


def is_repository_prefix(prefix: str) -> bool:
    """Components of a repository name (``docker.io``, ``ghcr.io/org``), whatever the length."""
    return NAME_PATTERN.fullmatch(prefix) is not None


def is_tag(tag: str) -> bool:
    return TAG_PATTERN.fullmatch(tag) is not None


def is_docker_hub(host: str) -> bool:
    return host in DOCKER_HUB_HOSTS


def official_name(name: str) -> str:
    """Docker Hub's name of an official image: ``python`` is ``library/python``."""
    return name if "/" in name else f"{OFFICIAL_NAMESPACE}/{name}"


@dataclass(frozen=True)
class Reference:
    domain: str  # as the user means it: docker.io, localhost:5000, [::1]:5000
    path: str  # the repository inside that registry: library/python
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """Where the registry API lives: Docker Hub's is not at docker.io."""
        return DOCKER_HUB_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def familiar(self) -> str:
        """The short form docker prints: ``python:3.12`` rather than the full name."""
        text = str(self)
        if self.domain != DEFAULT_DOMAIN:
            return text
        short = text.removeprefix(f"{DEFAULT_DOMAIN}/")
        if self.path.count("/") == 1:
            short = short.removeprefix(f"{OFFICIAL_NAMESPACE}/")
        # "docker.io/0.0/x" must keep its domain: "0.0/x" would name a registry called 0.0.
        return short if split_domain(short.split("@")[0].rsplit(":", 1)[0])[0] == DEFAULT_DOMAIN else text


def split_domain(name: str) -> tuple[str, str]:
    """docker's splitDockerDomain: the first component is a registry only if it looks like one."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN:
        remainder = official_name(remainder)
    return domain, remainder


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference; a tag defaults to ``latest`` only without a digest."""
    if not text:
        raise InvalidReference("empty image reference")
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise InvalidReference(f"invalid reference format: {text!r} contains whitespace")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if _REFERENCE.fullmatch(text.lower()):
            raise InvalidReference(f"invalid reference format: repository name must be lowercase: {text!r}")
        raise InvalidReference(f"invalid reference format: {text!r}")
    domain, path = split_domain(match.group("name"))
    if len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name longer than {MAX_NAME_LENGTH} characters: {text[:80]}...")
    digest = match.group("digest")
    if digest is not None:
        algorithm, _, encoded = digest.partition(":")
        expected = ALGORITHMS.get(algorithm)
        if expected is None:
            raise InvalidReference(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if len(encoded) != expected or encoded.lower() != encoded:
            raise InvalidReference(f"invalid {algorithm} digest in {text!r}")
    tag = match.group("tag")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
