"""The registries a mirror pulls from: their configuration, and an HTTP client that speaks
their auth (Docker Hub's token flow, Basic) and tells failures apart.

The mirror serves from its cache whenever an upstream is unreachable, slow or refusing
(429, 5xx), so those failures are ``UpstreamUnavailable``; an upstream that answers that it
has no such thing is ``UpstreamNotFound``, which no cache can fix.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("pier.mirror")

DOCKER_HUB = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io", "docker.io"}
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
TOKEN_MARGIN = 10.0  # seconds before expiry a cached token is no longer used
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


class UpstreamError(Exception):
    def __init__(self, upstream: Upstream, message: str, status: int | None = None) -> None:
        super().__init__(f"upstream {upstream.url}: {message}")
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """Unreachable, timed out, rate-limited or failing: what the cache is for."""


class UpstreamNotFound(UpstreamError):
    """The upstream answered that it has no such repository, manifest or blob."""


class UpstreamDenied(UpstreamError):
    """The upstream refused our credentials (or lack of them)."""


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
    logins: dict[str, tuple[str, str]] = {}
    for host, entry in (data.get("auths") or {}).items():
        if isinstance(entry, dict) and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            logins[host] = (user, password)
    return logins


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class UpstreamClient:
    """HTTP to one upstream, with tokens cached per scope until they expire."""

    def __init__(self, upstream: Upstream, timeout: float) -> None:
        self.upstream = upstream
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=True, headers={"user-agent": "pier-mirror"}
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (Authorization value, expiry)
        self._basic = False

    async def close(self) -> None:
        await self._http.aclose()

    def _authorization(self, scope: str) -> dict[str, str]:
        if self._basic:
            raw = f"{self.upstream.username}:{self.upstream.password}".encode()
            return {"authorization": "Basic " + base64.b64encode(raw).decode()}
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.time():
            return {"authorization": token[0]}
        return {}

    async def _authenticate(self, header: str, scope: str) -> None:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.upstream.username:
                raise UpstreamDenied(self.upstream, "asks for a login (Basic) and none is configured", 401)
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise UpstreamDenied(self.upstream, f"unsupported challenge {header[:100]!r}", 401)
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        auth = (self.upstream.username, self.upstream.password) if self.upstream.username else None
        try:
            answer = await self._http.get(params["realm"], params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.upstream, f"token server {params['realm']}: {exc!r}") from None
        if answer.status_code in (401, 403):
            raise UpstreamDenied(self.upstream, f"token server refused: {answer.status_code}", 401)
        if answer.status_code != 200:
            raise UpstreamUnavailable(self.upstream, f"token server answered {answer.status_code}", 503)
        try:
            data = answer.json()
            token = data.get("token") or data.get("access_token")
            lifetime = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamUnavailable(self.upstream, "token server sent no token", 503) from None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(self.upstream, "token server sent no token", 503)
        self._tokens[scope] = (f"Bearer {token}", time.time() + lifetime - TOKEN_MARGIN)

    async def send(
        self, method: str, name: str, path: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One request for repository ``name``, authenticated as the upstream asks; streamed.

        The caller closes the response. Failures the cache can cover raise
        ``UpstreamUnavailable``; a 404 raises ``UpstreamNotFound``.
        """
        scope = f"repository:{name}:pull"
        url = f"{self.upstream.url}/v2/{name}/{path}"
        for attempt in range(2):
            request = self._http.build_request(
                method, url, headers={**(headers or {}), **self._authorization(scope)}
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(
                    self.upstream, f"{method} {url}: {type(exc).__name__} {exc}"
                ) from None
            if response.status_code == 401 and attempt == 0:
                await response.aclose()
                await self._authenticate(response.headers.get("www-authenticate", ""), scope)
                continue
            break
        status = response.status_code
        if status < 300:
            return response
        await response.aclose()
        what = f"{method} /v2/{name}/{path} answered {status}"
        if status == 404:
            raise UpstreamNotFound(self.upstream, what, status)
        if status in (401, 403):
            raise UpstreamDenied(self.upstream, what, status)
        raise UpstreamUnavailable(self.upstream, what, status)

    async def fetch(
        self, method: str, name: str, path: str, headers: dict[str, str] | None, limit: int
    ) -> tuple[httpx.Response, bytes]:
        """``send``, then read a small body (a manifest) whole, at most ``limit`` bytes."""
        response = await self.send(method, name, path, headers)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise UpstreamUnavailable(self.upstream, f"{path}: body over {limit} bytes")
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.upstream, f"{path}: {type(exc).__name__} {exc}") from None
        finally:
            await response.aclose()
        return response, bytes(body)


async def body_chunks(upstream: Upstream, response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed body, its transport failures as ``UpstreamUnavailable``."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(upstream, f"download cut: {type(exc).__name__} {exc}") from None
    finally:
        await response.aclose()
