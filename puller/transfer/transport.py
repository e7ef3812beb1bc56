"""How bytes move between the client and one registry: scheme, auth, retries.

One ``Transport`` per registry host. It answers a 401 by following the challenge in
``WWW-Authenticate`` (the Docker token flow: realm, service, scope, with or without
credentials; or Basic) and reuses a token for its scope until it expires. Connection
errors, 5xx and 429 are retried with exponential backoff, honouring ``Retry-After``.
The rules (challenge grammar, token answers, where credentials may go) are ``oci``'s,
shared with the mirror; every answer is untrusted: read with a cap, parsed strictly.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from oci.auth import AuthFlowError, Problem, respond
from oci.headers import retry_after
from oci.jsonsafe import UntrustedJSONError, loads
from oci.policy import same_origin
from oci.tokens import MAX_TOKEN_RESPONSE, TokenError, expiry, parse_token_response

from ..errors import PierError
from ..text import printable
from .credentials import Credentials
from .raw_body import RawResponse, open_raw

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ERROR_BODY = 64 * 1024  # an error body is read this far for its message, no further
Body = Callable[[], bytes | Iterable[bytes]]
# What httpx raises for a server that breaks HTTP: bad URLs in Location, bad encodings, ...
HTTP_FAILURES = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)
_AUTH_PROBLEMS: dict[Problem, str] = {  # the client's words for oci.auth's refusals
    "challenge": "{url} asked for unusable auth ({exc}): {header!r}",
    "login-needed": "{url} requires a login (Basic auth)",
    "realm": "{url}: not sending credentials: {exc}",
}
pause = time.sleep  # the backoff's sleep, one name for tests to replace


class RegistryRequestError(PierError):
    """A registry answered with an error, or could not be reached; the message says which."""


class ConnectionLost(RegistryRequestError):
    """A response body broke off as it was read: what arrived is good, the rest may be asked again."""


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


def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed response, refused once it passes ``limit`` bytes."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise RegistryRequestError(f"{what} is larger than {limit} bytes")
    except HTTP_FAILURES as exc:
        raise RegistryRequestError(f"{what}: connection lost: {printable(str(exc), 300)}") from None
    return bytes(body)


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
        self.timeout = timeout
        self._ssl = ssl.create_default_context()  # the system's trust store, not a bundled one
        for authority in authorities:
            self._ssl.load_verify_locations(cafile=authority)
        # httpx drops Authorization on a redirect to another origin (oci.policy's rule too).
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout, follow_redirects=True, verify=self._ssl
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)
        self._basic = False

    def close(self) -> None:
        self._client.close()

    def raw_get(self, path: str, scope: str, headers: dict[str, str] | None = None) -> RawResponse | None:
        """``GET path`` read straight off its socket (``raw_body``); None when only httpx can
        take the answer (a challenge, a redirect, a coding), which ``stream`` then handles."""
        request_headers = {**(headers or {}), **self._auth_header(scope)}
        return open_raw(self.base_url, path, request_headers, self._ssl, self.timeout)

    def _auth_header(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic and self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _authenticate(self, header: str, scope: str) -> None:
        credentials = self.credentials
        try:
            request = respond(
                header,
                self.base_url,
                scope.split(),
                has_login=credentials is not None,
                refresh_token=(credentials.identity_token or None) if credentials is not None else None,
            )
        except AuthFlowError as exc:
            words = _AUTH_PROBLEMS[exc.problem]
            raise RegistryRequestError(
                words.format(url=self.base_url, exc=exc, header=header[:100])
            ) from None
        if request is None:
            self._basic = True
            return
        realm = request.url.split("?", 1)[0]
        auth = (credentials.username, credentials.password) if request.basic and credentials else None
        where = f"token service {printable(realm, 100)}"
        try:
            # Its own client, without redirects: the login goes to the realm that passed the policy.
            with (
                httpx.Client(timeout=min(self.timeout, 30), verify=self._ssl) as http,
                http.stream(request.method, request.url, data=request.form, auth=auth) as answer,
            ):
                if answer.status_code != 200:
                    raise RegistryRequestError(f"{where} refused: {error_message(answer)}")
                body = read_capped(answer, MAX_TOKEN_RESPONSE, f"{where}: the answer")
        except HTTP_FAILURES as exc:
            raise RegistryRequestError(f"{where} unreachable: {printable(str(exc), 300)}") from None
        try:
            token = parse_token_response(body)
        except TokenError as exc:
            raise RegistryRequestError(f"{where} sent {exc}") from None
        self._tokens[scope] = (token.value, expiry(token, time.monotonic()))

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
        again for each attempt, so a streamed upload can be retried from its start. A ``path``
        the registry gave (an upload's Location) on another origin gets no credentials.
        """
        try:
            url = str(self._client.base_url.join(path))
        except HTTP_FAILURES:
            raise RegistryRequestError(f"{self.base_url} gave an invalid URL: {path[:100]!r}") from None
        own = same_origin(url, self.base_url)
        authenticated = False
        attempt = -1
        while attempt < self.retries:
            attempt += 1
            request_headers = {**(headers or {}), **(self._auth_header(scope) if own else {})}
            body = content() if content is not None else None
            try:
                request = self._client.build_request(method, url, headers=request_headers, content=body)
                # Redirects only for requests without a body: a streamed body cannot be sent twice.
                response = self._client.send(request, stream=True, follow_redirects=method in ("GET", "HEAD"))
            except HTTP_FAILURES as exc:
                reason = printable(str(exc) or type(exc).__name__, 300)
                if not isinstance(exc, httpx.TransportError):  # a redirect loop, a bad Location, ...
                    raise RegistryRequestError(f"{self.base_url}: {method} {path[:100]}: {reason}") from None
                if attempt == self.retries:
                    raise RegistryRequestError(f"{self.base_url} unreachable: {reason}") from None
                pause(min(2**attempt * 0.2, 5))
                continue
            # Only the registry's own challenge is answered, never one from where it redirected.
            if (
                response.status_code == 401
                and not authenticated
                and own
                and same_origin(str(response.url), self.base_url)
            ):
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authenticate(challenge, scope)
                authenticated = True
                attempt -= 1  # answering the challenge is not a retry
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                delay = retry_after(response.headers.get("retry-after"))
                response.close()
                pause(min(2**attempt * 0.2, 5) if delay is None else delay)
                continue
            try:
                yield response
            except HTTP_FAILURES as exc:  # the body broke off, or was not what it said, as it was read
                raise ConnectionLost(
                    f"{self.base_url}: connection lost in {path[:100]}: {printable(str(exc), 300)}"
                ) from None
            finally:
                response.close()
            return
        raise RegistryRequestError(f"{self.base_url}: gave up after {self.retries + 1} attempts")


def error_message(response: httpx.Response) -> str:
    """The registry's own words for an error response, in one printable line."""
    status = f"{response.status_code} {printable(response.reason_phrase, 100)}".strip()
    try:
        body = read_capped(response, MAX_ERROR_BODY, "error body")
        document = loads(body)
    except (RegistryRequestError, UntrustedJSONError):
        return status
    if not isinstance(document, dict):
        return status
    oauth = document.get("error")  # a token service's OAuth2 answer: {"error": "invalid_grant", ...}
    if isinstance(oauth, str) and oauth:
        described = document.get("error_description")
        suffix = f": {printable(described, 200)}" if isinstance(described, str) and described else ""
        return f"{status} ({printable(oauth, 100)}{suffix})"
    errors = document.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return status
    first = errors[0]
    code, message = (value if isinstance(value := first.get(key), str) else "" for key in ("code", "message"))
    line = f"{response.status_code} {printable(code, 100)}: {printable(message, 200)}".strip(" :")
    detail = first.get("detail")
    if isinstance(detail, str) and detail:  # e.g. a mirror naming its upstream's answer
        line += f" ({printable(detail, 300)})"
    return line
