"""Image references as the client takes them: ``oci.reference``'s docker grammar, the
client's error type.

``python:3.12`` is ``docker.io/library/python:3.12``; ``localhost:5000/x`` and
``registry.example/ns/x@sha256:...`` name their own registry.
"""

from __future__ import annotations

from oci import reference as grammar
from oci.reference import DEFAULT_TAG, Reference

from .errors import PierError

__all__ = ["DEFAULT_TAG", "InvalidReference", "Reference", "parse_reference"]


class InvalidReference(PierError, grammar.InvalidReference):
    """A reference that docker would refuse too; the message says why."""


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference; a tag defaults to ``latest`` only without a digest."""
    try:
        return grammar.parse_reference(text)
    except grammar.InvalidReference as exc:
        raise InvalidReference(str(exc)) from None
