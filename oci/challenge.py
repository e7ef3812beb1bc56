"""``WWW-Authenticate`` challenges, parsed by RFC 7235's grammar.

``WWW-Authenticate = 1#challenge``; ``challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``;
``auth-param = token BWS "=" BWS ( token / quoted-string )``. Scheme and parameter names are
case-insensitive (returned lowercase); a quoted-string may hold ``\\``-escapes and commas;
several challenges may share one header. A header that breaks the grammar raises
``ChallengeError``: a server's answer is untrusted input, and a guess at what a broken
header meant could send credentials somewhere it did not mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEADER = 16 * 1024  # larger than any real challenge; a hostile one is refused, not scanned
MAX_PARAMS = 64

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\U0010ffff])*)"')
_OWS = re.compile(r"[ \t]*")
_ESCAPE = re.compile(r"\\(.)")


class ChallengeError(ValueError):
    """A ``WWW-Authenticate`` header that does not follow RFC 7235's grammar."""


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)  # names lowercase, values unescaped
    token68: str | None = None


def _skip(header: str, at: int) -> int:
    return _OWS.match(header, at).end()  # type: ignore[union-attr]  # matches the empty string too


def _param_at(header: str, at: int) -> tuple[str, str, int] | None:
    """``name = value`` at ``at``: (name, value, end), or None when no ``=`` follows a token."""
    name = _TOKEN.match(header, at)
    if name is None:
        return None
    equals = _skip(header, name.end())
    if not header.startswith("=", equals):
        return None
    at = _skip(header, equals + 1)
    quoted = _QUOTED.match(header, at)
    if quoted is not None:
        return name.group().lower(), _ESCAPE.sub(r"\1", quoted.group(1)), quoted.end()
    value = _TOKEN.match(header, at)
    if value is None:
        raise ChallengeError(f"parameter {name.group()[:40]!r} has no value")
    return name.group().lower(), value.group(), value.end()


def _token68_at(header: str, at: int) -> tuple[str, int] | None:
    match = _TOKEN68.match(header, at)
    if match is None:
        return None
    end = _skip(header, match.end())
    return (match.group(), end) if end == len(header) or header[end] == "," else None


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one header, in order; ``ChallengeError`` when it breaks the grammar."""
    if len(header) > MAX_HEADER:
        raise ChallengeError(f"a challenge header of {len(header)} characters")
    found: list[Challenge] = []
    at = 0
    while True:
        while at < len(header) and header[at] in " \t,":  # empty list elements are allowed
            at += 1
        if at == len(header):
            break
        scheme = _TOKEN.match(header, at)
        if scheme is None:
            raise ChallengeError(f"no auth scheme at {header[at : at + 40]!r}")
        at = scheme.end()
        params: dict[str, str] = {}
        token68 = None
        if at < len(header) and header[at] not in " \t,":
            raise ChallengeError(f"unexpected {header[at]!r} after the scheme {scheme.group()[:40]!r}")
        at = _skip(header, at)
        if at < len(header) and header[at] != ",":
            single = _token68_at(header, at)
            param = None if single is not None else _param_at(header, at)
            if single is not None:
                token68, at = single
            elif param is None:
                raise ChallengeError(f"neither token68 nor parameters at {header[at : at + 40]!r}")
            else:
                while param is not None:
                    name, value, at = param
                    if name in params:
                        raise ChallengeError(f"parameter {name[:40]!r} given twice")
                    if len(params) == MAX_PARAMS:
                        raise ChallengeError(f"more than {MAX_PARAMS} parameters")
                    params[name] = value
                    at = _skip(header, at)
                    if at == len(header):
                        break
                    if header[at] != ",":
                        raise ChallengeError(f"expected ',' at {header[at : at + 40]!r}")
                    # After a comma: another parameter, or (a token not followed by "=") the next challenge.
                    following = at
                    while following < len(header) and header[following] in " \t,":
                        following += 1
                    param = _param_at(header, following) if following < len(header) else None
                    if param is None:
                        at = following
        found.append(Challenge(scheme.group().lower(), params, token68))
    if not found:
        raise ChallengeError("an empty challenge header")
    return found


def choose(header: str) -> Challenge:
    """The challenge to answer: a Bearer one with a realm first (the token flow), else Basic."""
    challenges = parse_challenges(header)
    for challenge in challenges:
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            return challenge
    for challenge in challenges:
        if challenge.scheme == "basic":
            return challenge
    names = ", ".join(sorted({c.scheme for c in challenges}))[:100]
    raise ChallengeError(f"no supported challenge (Bearer with a realm, or Basic) among: {names}")
