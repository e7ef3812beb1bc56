"""The registries a mirror pulls from, as configured: URL, repository prefix, login.

Kept apart from the HTTP client (``upstream_client.py``), so that reading the settings, and
starting a server that mirrors nothing, never imports the client's aiohttp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from oci import credentials
from oci.reference import (
    DEFAULT_DOMAIN,
    DOCKER_HUB_API_HOST,
    is_docker_hub,
    is_repository_prefix,
    official_name,
)

DOCKER_HUB = f"https://{DOCKER_HUB_API_HOST}"


@dataclass(frozen=True)
class Upstream:
    """One upstream registry: its URL, the repository prefix it serves under, its login."""

    url: str
    prefix: str
    default: bool = False  # also serves bare names (docker's and containerd's registry-mirrors)
    username: str = ""
    password: str = ""

    @property
    def is_docker_hub(self) -> bool:
        return is_docker_hub(urlsplit(self.url).hostname or "")

    def upstream_name(self, name: str) -> str:
        """Docker Hub's official images live under ``library/``: ``python`` is ``library/python``."""
        return official_name(name) if self.is_docker_hub else name


def parse_upstreams(spec: str, auth_file: str = "") -> list[Upstream]:
    """``URL`` (the default upstream, bare names) or ``PREFIX=URL`` entries, comma-separated.

    A URL may carry ``user:password@``; otherwise credentials come from ``auth_file``, in
    docker's ``config.json`` format, looked up by the upstream's host.
    """
    config = _read_auth_file(auth_file) if auth_file else {}
    found: list[Upstream] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        prefix, sep, url = entry.partition("=")
        if not sep:
            prefix, url = "", entry
        url = url if "://" in url else f"https://{url}"
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(f"proxy: not an http(s) URL: {url!r}")
        default = not sep
        if default:
            prefix = DEFAULT_DOMAIN if is_docker_hub(host) else host
        prefix = prefix.strip("/")
        if not is_repository_prefix(prefix):
            raise ValueError(f"proxy: {prefix!r} is not a repository prefix (lowercase, like docker.io)")
        netloc = parts.netloc.rpartition("@")[2]
        username, password = parts.username or "", parts.password or ""
        if not username:
            username, password = _login(config, netloc, auth_file)
        clean = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        found.append(Upstream(clean, prefix, default, username, password))
    if sum(u.default for u in found) > 1:
        raise ValueError("proxy: only one upstream can serve bare names (give the others PREFIX=URL)")
    prefixes = [u.prefix for u in found]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"proxy: two upstreams share a prefix: {prefixes}")
    return found


def _read_auth_file(path: str) -> dict[str, Any]:
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            return credentials.parse_config(handle.read())
    except OSError as exc:
        raise ValueError(f"proxy_auth_file {path}: {exc}") from None
    except credentials.ConfigError as exc:
        raise _auth_file_error(path, exc) from None


def _login(config: dict[str, Any], host: str, path: str) -> tuple[str, str]:
    """The login docker's config.json holds for ``host``: its ``auths`` only (no helper runs here),
    and no identity token (the mirror's token flow sends a password)."""
    try:
        login = credentials.find_login(config, host, helpers=False)
    except credentials.ConfigError as exc:
        raise _auth_file_error(path, exc) from None
    if not isinstance(login, credentials.Login) or login.identity_token:
        return "", ""
    return login.username, login.password


def _auth_file_error(path: str, exc: credentials.ConfigError) -> ValueError:
    """The mirror's own words for two of docker's rules, ``oci``'s for the others."""
    if exc.problem == "document":
        return ValueError(f"proxy_auth_file {path}: not a JSON object (docker's config.json)")
    if exc.problem == "base64":
        return ValueError(f"proxy_auth_file {path}: the auth of {str(exc.key)[:80]!r} is not base64")
    return ValueError(f"proxy_auth_file {path}: {exc}")
