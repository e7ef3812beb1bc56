"""Where credentials may go: the never-downgrade rule for token realms, and same-origin checks.

A registry reached over HTTPS may only send us to an HTTPS realm: a plain-HTTP realm would
carry the password (or refresh token) in cleartext. A plain-HTTP realm is accepted only for
a registry the user chose to reach over plain HTTP (``--insecure``, loopback, a mirror's
``http://`` upstream), and then only on that registry's own host. Credentials and tokens
are sent only to the registry's own origin, never to where it redirects elsewhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class PolicyError(ValueError):
    """A realm or redirect target that credentials must not be sent to."""


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in; ``ValueError`` if unusable."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)  # .port raises ValueError for a bad port
    return scheme, host, port


def same_origin(first: str, second: str) -> bool:
    try:
        return origin(first) == origin(second)
    except ValueError:
        return False


def check_realm(registry_url: str, realm: str) -> None:
    """Raise ``PolicyError`` unless ``realm`` may receive the login for ``registry_url``.

    ``registry_url`` is the base URL the client really uses: ``http://`` only when the user
    chose plain HTTP for that registry.
    """
    try:
        registry_scheme, registry_host, _ = origin(registry_url)
        scheme, host, _ = origin(realm)
    except ValueError:
        raise PolicyError(f"token realm {realm[:100]!r} is not a valid URL") from None
    if scheme not in DEFAULT_PORTS or not host:
        raise PolicyError(f"token realm {realm[:100]!r} is not an http(s) URL")
    if scheme == "https":
        return
    if registry_scheme == "https":
        raise PolicyError(
            f"token realm {realm[:100]!r} is plain HTTP but the registry is HTTPS: refusing to downgrade"
        )
    if host != registry_host:
        raise PolicyError(
            f"token realm {realm[:100]!r} is plain HTTP on another host than the registry {registry_host}"
        )
