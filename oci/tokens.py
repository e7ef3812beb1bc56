"""The Docker token flow without the I/O: which request to send, and what a valid answer is.

The request is distribution's (``docs/spec/auth/token.md``): ``GET realm?service=&scope=``
with Basic credentials or none, or, with a refresh token (docker's "identity token"), the
OAuth2 form ``POST realm`` with ``grant_type=refresh_token``. The answer is untrusted:
``token`` (or ``access_token``) must be a non-empty string; ``expires_in`` a positive
finite number of seconds, anything else means the default lifetime (never an error);
``issued_at`` is optional and only informative, since the local clock decides expiry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from .jsonsafe import UntrustedJSONError, loads

DEFAULT_LIFETIME = 60.0  # seconds, distribution's default when expires_in is absent
MAX_LIFETIME = 24 * 3600.0  # a token is re-fetched at least daily, whatever the server says
MAX_TOKEN_RESPONSE = 1024 * 1024  # bytes: a JWT with many scopes is tens of KiB
MARGIN = 10.0  # seconds before expiry a cached token is no longer used


class TokenError(ValueError):
    """A token service answer that holds no usable token."""


@dataclass(frozen=True)
class TokenRequest:
    """What to send to the realm: ``method`` ``url`` with ``form`` as the body when a POST."""

    method: str  # "GET" or "POST"
    url: str
    form: dict[str, str] | None = None
    basic: bool = False  # send the username and password as Basic credentials


@dataclass(frozen=True)
class Token:
    value: str
    lifetime: float  # seconds from receipt during which to use it

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"


def token_request(
    realm: str,
    service: str | None,
    scopes: list[str],
    *,
    has_login: bool = False,
    refresh_token: str | None = None,
    client_id: str = "pier",
) -> TokenRequest:
    """The request for a token of ``scopes`` at ``realm`` (whose policy the caller checked)."""
    if refresh_token:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        return TokenRequest("POST", realm, form)
    query = [("service", service)] if service else []
    query += [("scope", scope) for scope in scopes]
    separator = "&" if "?" in realm else "?"
    url = f"{realm}{separator}{urlencode(query)}" if query else realm
    return TokenRequest("GET", url, None, basic=has_login)


def lifetime_of(value: object) -> float:
    """``expires_in`` as seconds: a positive finite number, else the default lifetime."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_LIFETIME
    if not math.isfinite(value) or value <= 0:
        return DEFAULT_LIFETIME
    return min(float(value), MAX_LIFETIME)


def parse_token_response(body: bytes) -> Token:
    """The token in a token service's 200 answer; ``TokenError`` says what is wrong with it."""
    if len(body) > MAX_TOKEN_RESPONSE:
        raise TokenError(f"an answer over {MAX_TOKEN_RESPONSE} bytes")
    try:
        document = loads(body)
    except UntrustedJSONError as exc:
        raise TokenError(f"an answer that is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise TokenError("an answer that is not a JSON object")
    value = document.get("token")
    if not (isinstance(value, str) and value):
        value = document.get("access_token")
    if not (isinstance(value, str) and value):
        raise TokenError("no token (token or access_token must be a non-empty string)")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise TokenError("a token with characters an HTTP header cannot carry")
    return Token(value, lifetime_of(document.get("expires_in")))


def expiry(token: Token, now: float) -> float:
    """When to stop using ``token`` received at ``now``: a margin before it expires."""
    return now + token.lifetime - min(MARGIN, token.lifetime / 2)
