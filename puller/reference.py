"""Image references, parsed and normalised exactly as docker does.

``python:3.12`` is ``docker.io/library/python:3.12``; ``localhost:5000/x`` and
``registry.example/ns/x@sha256:...`` name their own registry. The grammar and the
normalisation rules are those of distribution's ``reference`` package
(``reference.go`` and ``normalize.go``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PierError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"

_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}


class ReferenceError(PierError, ValueError):
    """A reference that docker would refuse too; the message says why."""


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
        return short if _split_domain(short.split("@")[0].rsplit(":", 1)[0])[0] == DEFAULT_DOMAIN else text


def _split_domain(name: str) -> tuple[str, str]:
    """docker's splitDockerDomain: the first component is a registry only if it looks like one."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = f"{OFFICIAL_NAMESPACE}/{remainder}"
    return domain, remainder


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference; a tag defaults to ``latest`` only without a digest."""
    if not text:
        raise ReferenceError("empty image reference")
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise ReferenceError(f"invalid reference format: {text!r} contains whitespace")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if _REFERENCE.fullmatch(text.lower()):
            raise ReferenceError(f"invalid reference format: repository name must be lowercase: {text!r}")
        raise ReferenceError(f"invalid reference format: {text!r}")
    domain, path = _split_domain(match.group("name"))
    if len(path) > MAX_NAME_LENGTH:
        raise ReferenceError(f"repository name longer than {MAX_NAME_LENGTH} characters: {text[:80]}...")
    digest = match.group("digest")
    if digest is not None:
        algorithm, _, hexpart = digest.partition(":")
        expected = _DIGEST_LENGTHS.get(algorithm)
        if expected is None:
            raise ReferenceError(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if len(hexpart) != expected or hexpart.lower() != hexpart:
            raise ReferenceError(f"invalid {algorithm} digest in {text!r}")
    tag = match.group("tag")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
