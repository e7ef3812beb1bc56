"""Web UI sessions: a signed cookie naming the user, with the CSRF token its forms must carry.

Nothing is stored server-side, so any replica that shares ``ui_session_key`` serves any
session. The cookie is HttpOnly, SameSite=Strict and Secure (on plain HTTP only loopback,
which browsers treat as secure, gets one); it holds no password, only the user name, an
expiry and a random CSRF token, under an HMAC-SHA256 of a server secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "pier_ui"
LOGIN_COOKIE = "pier_ui_login"  # the CSRF token of a login form, before there is a session
LIFETIME = 8 * 3600.0
MIN_KEY_BYTES = 32


class SessionKeyError(ValueError):
    pass


def load_key(path: str) -> bytes:
    """The signing secret from ``ui_session_key``'s file, or a random one for this process."""
    if not path:
        return secrets.token_bytes(32)
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SessionKeyError(f"ui_session_key {path}: {exc.strerror or exc}") from None
    if len(key) < MIN_KEY_BYTES:
        raise SessionKeyError(f"ui_session_key {path}: needs at least {MIN_KEY_BYTES} bytes of secret")
    return key


@dataclass(frozen=True)
class Session:
    user: str  # "" for an anonymous visitor
    csrf: str
    expires: float
    password: str = ""  # a fingerprint of the user's stored hash: a changed password ends the session


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"pier-ui-session\0" + key).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, user: str, lifetime: float = LIFETIME, password: str = "") -> tuple[str, Session]:
        session = Session(user, secrets.token_urlsafe(24), time.time() + lifetime, password)
        fields = {"u": user, "c": session.csrf, "e": round(session.expires), "p": password}
        payload = _b64(json.dumps(fields).encode())
        return f"{payload}.{self._mac(payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None for anything forged, damaged or expired."""
        if not cookie or len(cookie) > 4096 or "." not in cookie or not cookie.isascii():
            return None
        payload, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["u"]), str(data["c"]), float(data["e"]), str(data.get("p", "")))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None


def same_token(given: object, expected: str) -> bool:
    """A form field (a string, or anything a hostile form sends) equals the token."""
    if not isinstance(given, str) or not given or not expected or not given.isascii():
        return False
    return hmac.compare_digest(given, expected)
