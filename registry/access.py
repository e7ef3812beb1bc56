"""Turn the auth settings into the access check and the token server they describe, or refuse them.

Three modes: ``none`` (an open registry, for localhost), ``htpasswd`` (Basic on every
request) and ``token`` (bearer tokens from a token server: this one when ``token_key`` is
set, or an external issuer trusted through ``token_trust``). Every inconsistent
combination is an error at startup, never a surprise at the first request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .auth import Access, Acl, AuthConfigError, BasicAccess, BearerAccess, Htpasswd, Logins
from .config import Settings
from .token_server import TokenServer
from .tokens import KeyConfigError, SigningKey, TokenVerifier, TrustedKeys

MODES = ("none", "htpasswd", "token")


@dataclass
class Security:
    mode: str
    access: Access | None  # None: an open registry
    token_server: TokenServer | None  # serves /auth/token when token_key is set


def auth_mode(settings: Settings) -> str:
    if settings.auth:
        return settings.auth
    if settings.token_key or settings.token_trust:
        return "token"
    return "htpasswd" if settings.htpasswd else "none"


def build(settings: Settings) -> Security:
    mode = auth_mode(settings)
    if mode not in MODES:
        raise AuthConfigError(f"auth must be one of {', '.join(MODES)}, got {mode!r}")
    if settings.acl and not settings.htpasswd:
        raise AuthConfigError("acl needs htpasswd: without users there is nobody to grant to")
    if settings.token_only and not settings.token_key:
        raise AuthConfigError("token_only serves tokens, so it needs token_key")
    if mode == "none" and settings.htpasswd and not settings.token_only:
        raise AuthConfigError("htpasswd is set but auth is none: say auth = htpasswd or token")
    try:
        return _build(settings, mode)
    except KeyConfigError as exc:
        raise AuthConfigError(str(exc)) from None


def _build(settings: Settings, mode: str) -> Security:
    htpasswd = logins = acl = None
    if settings.htpasswd:
        if not os.path.isfile(settings.htpasswd):
            raise AuthConfigError(f"htpasswd file {settings.htpasswd} does not exist")
        htpasswd = Htpasswd(settings.htpasswd)
        logins = Logins(htpasswd)
        acl = Acl.load(settings.acl) if settings.acl else Acl.default()
    key = SigningKey(settings.token_key) if settings.token_key else None
    token_server = None
    if key is not None:
        if htpasswd is None or logins is None or acl is None:
            raise AuthConfigError("the token server (token_key) checks passwords: it needs htpasswd")
        token_server = TokenServer(
            key,
            htpasswd,
            logins,
            acl,
            settings.token_issuer,
            settings.token_service,
            settings.token_lifetime,
            settings.token_refresh_lifetime,
        )
    if settings.token_only:
        return Security("token", None, token_server)
    if mode == "none":
        return Security(mode, None, token_server)
    if mode == "htpasswd":
        if logins is None or acl is None:
            raise AuthConfigError("auth = htpasswd needs an htpasswd file")
        return Security(mode, BasicAccess(logins, acl), token_server)
    trust = [path for path in settings.token_trust.split(",") if path]
    if not trust and key is None:
        raise AuthConfigError("auth = token needs token_key (be the token server) or token_trust (trust one)")
    if not settings.token_realm and key is None:
        raise AuthConfigError("auth = token with an external issuer needs token_realm, its token URL")
    trusted = TrustedKeys.load(trust, [key.public_key] if key else [])
    verifier = TokenVerifier(trusted, settings.token_issuer, settings.token_service)
    access = BearerAccess(verifier, settings.token_realm, settings.token_service, acl if key else None)
    return Security(mode, access, token_server)
