"""How bytes move between the client and one registry: scheme, auth, retries.

One ``Transport`` per registry host. It answers a 401 by following the challenge in
``WWW-Authenticate`` (the Docker token flow: realm, service, scope, with or without
credentials; or Basic) and reuses a token for its scope until it expires. Connection
errors, 5xx and 429 are retried with exponential backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .credentials import Credentials
from .errors import PierError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
Body = Callable[[], bytes | Iterable[bytes]]
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


class RegistryRequestError(PierError):
    """A registry answered with an error, or could not be reached; the message says which."""


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def certs_dir() -> Path:
    """docker's per-registry CA folder: ``<dir>/<host:port>/*.crt`` (``PIER_CERTS_DIR`` overrides)."""
    return Path(os.environ.get("PIER_CERTS_DIR") or "/etc/docker/certs.d")


def registry_cas(host: str, ca_cert: str | None = None) -> list[str]:
    """CA files to trust for ``host`` beyond the system store: ``--ca-cert`` and docker's certs.d."""
    found = [ca_cert] if ca_cert else []
    folder = certs_dir() / host
    if folder.is_dir():
        found += sorted(str(path) for path in folder.glob("*.crt") if not path.name.endswith(".cert"))
    return found


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): quoted or bare for key, quoted, bare in _CHALLENGE_PARAM.findall(rest)}
    return scheme.lower(), params


class Transport:
    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        retries: int = 4,
        timeout: float = 60.0,
        ca_cert: str | None = None,
    ) -> None:
        authorities = registry_cas(host, ca_cert)
        # HTTPS unless told otherwise, or a loopback host nobody gave a CA for (docker's rule).
        plain = insecure or (is_loopback(host) and not authorities)
        self.base_url = f"{'http' if plain else 'https'}://{host}"
        self.credentials = credentials
        self.retries = retries
        self._ssl = ssl.create_default_context()  # the system's trust store, not a bundled one
        for authority in authorities:
            self._ssl.load_verify_locations(cafile=authority)
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout, follow_redirects=True, verify=self._ssl
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)
        self._basic = False

    def close(self) -> None:
        self._client.close()

    def _auth_header(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic and self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryRequestError(f"{self.base_url} requires a login (Basic auth)")
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryRequestError(f"{self.base_url} asked for unsupported auth: {challenge[:100]}")
        scopes = sorted(set(params.get("scope", "").split()) | set(scope.split()))
        service = params.get("service", "")
        credentials = self.credentials
        try:
            if credentials is not None and credentials.identity_token:
                # docker's way with an identity token: the OAuth2 refresh grant, by POST.
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": credentials.identity_token,
                    "service": service,
                    "scope": " ".join(scopes),
                    "client_id": "pier",
                }
                answer = httpx.post(params["realm"], data=form, timeout=30, verify=self._ssl)
            else:
                query: dict[str, str | list[str]] = {"service": service, "scope": scopes}
                auth = (credentials.username, credentials.password) if credentials is not None else None
                answer = httpx.get(params["realm"], params=query, auth=auth, timeout=30, verify=self._ssl)
        except httpx.TransportError as exc:
            raise RegistryRequestError(f"token service {params['realm']} unreachable: {exc}") from None
        if answer.status_code != 200:
            raise RegistryRequestError(
                f"token service {params['realm']} refused: {answer.status_code} {answer.text[:200]}"
            )
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryRequestError(f"token service {params['realm']} answered something other than JSON")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryRequestError(f"token service {params['realm']} sent no token")
        lifetime = float(body.get("expires_in", 60))
        self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, 5))

    def check_login(self) -> None:
        """Prove the credentials: ``GET /v2/`` must succeed once the challenge is answered with them."""
        if self.credentials is None:
            raise RegistryRequestError("no credentials to check")
        with self.stream("GET", "/v2/", "") as response:
            if response.status_code == 401:
                raise RegistryRequestError(f"login to {self.base_url} failed: wrong username or password")
            if response.status_code != 200:
                raise RegistryRequestError(f"login to {self.base_url} failed: {error_message(response)}")
        if not self._basic and not self._tokens:
            raise RegistryRequestError(f"{self.base_url} asks for no credentials: nothing to log in to")

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None = None,
        content: Body | None = None,
    ) -> Iterator[httpx.Response]:
        """One request, authenticated and retried; the body is left for the caller to stream.

        ``scope`` is the token scope the request needs (space-separated when several, as for
        a cross-repository mount). ``content`` is a function giving the request body, called
        again for each attempt, so a streamed upload can be retried from its start.
        """
        authenticated = False
        for attempt in range(self.retries + 1):
            request_headers = {**(headers or {}), **self._auth_header(scope)}
            body = content() if content is not None else None
            try:
                request = self._client.build_request(method, path, headers=request_headers, content=body)
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RegistryRequestError(f"{self.base_url} unreachable: {exc}") from None
                time.sleep(min(2**attempt * 0.2, 5))
                continue
            if response.status_code == 401 and not authenticated:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authenticate(challenge, scope)
                authenticated = True
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                delay = _retry_after(response) or min(2**attempt * 0.2, 5)
                response.close()
                time.sleep(delay)
                continue
            try:
                yield response
            except httpx.TransportError as exc:  # the body broke off while the caller read it
                raise RegistryRequestError(f"{self.base_url}: connection lost in {path}: {exc}") from None
            finally:
                response.close()
            return
        raise RegistryRequestError(f"{self.base_url}: gave up after {self.retries + 1} attempts")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), 30.0) if value.isdigit() else None


def error_message(response: httpx.Response) -> str:
    """The registry's own words for an error response, in one line."""
    try:
        response.read()
        errors = response.json().get("errors", [])
        if errors:
            first = errors[0]
            line = f"{response.status_code} {first.get('code', '')}: {first.get('message', '')}".strip()
            detail = first.get("detail")
            if isinstance(detail, str) and detail:  # e.g. a mirror naming its upstream's answer
                line += f" ({' '.join(detail.split())[:300]})"
            return line
    except (ValueError, AttributeError, httpx.HTTPError):
        pass
    return f"{response.status_code} {response.reason_phrase}"
