"""The registries a mirror pulls from, as configured: URL, repository prefix, login.

Kept apart from the HTTP client (``upstream.py``), so that reading the settings, and
starting a server that mirrors nothing, never imports the client's aiohttp.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DOCKER_HUB = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io", "docker.io"}
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


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
        return (urlsplit(self.url).hostname or "") in DOCKER_HUB_HOSTS

    def upstream_name(self, name: str) -> str:
        """Docker Hub's official images live under ``library/``: ``python`` is ``library/python``."""
        return f"library/{name}" if self.is_docker_hub and "/" not in name else name


def parse_upstreams(spec: str, auth_file: str = "") -> list[Upstream]:
    """``URL`` (the default upstream, bare names) or ``PREFIX=URL`` entries, comma-separated.

    A URL may carry ``user:password@``; otherwise credentials come from ``auth_file``, in
    docker's ``config.json`` format, looked up by the upstream's host.
    """
    logins = _read_auth_file(auth_file) if auth_file else {}
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
            prefix = "docker.io" if host in DOCKER_HUB_HOSTS else host
        prefix = prefix.strip("/")
        if not prefix or not all(_COMPONENT.fullmatch(p) for p in prefix.split("/")):
            raise ValueError(f"proxy: {prefix!r} is not a repository prefix (lowercase, like docker.io)")
        username, password = parts.username or "", parts.password or ""
        if not username:
            username, password = logins.get(parts.netloc.rpartition("@")[2], ("", ""))
            if not username and host in DOCKER_HUB_HOSTS:
                username, password = logins.get("https://index.docker.io/v1/", ("", ""))
        netloc = parts.netloc.rpartition("@")[2]
        clean = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        found.append(Upstream(clean, prefix, default, username, password))
    if sum(u.default for u in found) > 1:
        raise ValueError("proxy: only one upstream can serve bare names (give the others PREFIX=URL)")
    prefixes = [u.prefix for u in found]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"proxy: two upstreams share a prefix: {prefixes}")
    return found


def _read_auth_file(path: str) -> dict[str, tuple[str, str]]:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"proxy_auth_file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"proxy_auth_file {path}: not a JSON object (docker's config.json)")
    auths = data.get("auths") or {}
    if not isinstance(auths, dict):
        raise ValueError(f"proxy_auth_file {path}: auths is not an object")
    logins: dict[str, tuple[str, str]] = {}
    for host, entry in auths.items():
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (TypeError, ValueError):
                raise ValueError(f"proxy_auth_file {path}: the auth of {host[:80]!r} is not base64") from None
            logins[host] = (user, password)
    return logins
