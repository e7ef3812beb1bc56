"""The token server: ``GET`` and OAuth2 ``POST`` on ``/auth/token``, as docker and containerd use them.

It checks the caller's password against the htpasswd file (or takes them as anonymous),
and grants the intersection of the scopes they asked for and what the ACL allows. Refresh
tokens (``offline_token=true`` on ``GET``, ``access_type=offline`` on the password grant)
are JWTs too, signed by the same key for an audience no registry accepts, so any replica
can redeem them; they stop working when the user is removed or their password changes.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import ACTION_ORDER, ACTIONS, ANONYMOUS, REALM, Acl, Htpasswd, Logins
from .errors import RegistryError
from .http import error_response, read_limited
from .references import validate_name
from .tokens import LEEWAY, Grant, SigningKey

log = logging.getLogger("pier.tokens")

MAX_SCOPES = 32
MAX_FORM = 64 * 1024


class TokenRequestError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def parse_scopes(values: list[str]) -> list[tuple[str, str, frozenset[str]]]:
    """``repository:NAME:pull,push`` (several per value, space-separated) -> (type, name, actions).

    Scopes that are malformed, or name an invalid repository, are dropped: the token then
    simply does not grant them, which is what the caller will be told when it uses it.
    """
    scopes = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if not kind or not name or not actions:
                continue
            if kind == "repository":
                try:
                    validate_name(name)
                except RegistryError:
                    continue
            scopes.append((kind, name, frozenset(actions.split(","))))
    if len(scopes) > MAX_SCOPES:
        raise TokenRequestError(400, "invalid_scope", f"at most {MAX_SCOPES} scopes per request")
    return scopes


class TokenServer:
    def __init__(
        self,
        key: SigningKey,
        htpasswd: Htpasswd,
        logins: Logins,
        acl: Acl,
        issuer: str,
        service: str,
        lifetime: float,
        refresh_lifetime: float,
    ) -> None:
        self.key = key
        self.htpasswd = htpasswd
        self.logins = logins
        self.acl = acl
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime
        self.refresh_lifetime = refresh_lifetime
        self.refresh_audience = f"{service}#refresh"  # never a registry's service name

    # -- HTTP --------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                return await self._get(request)
            if request.method == "POST":
                return await self._post(request)
            return JSONResponse({"error": "invalid_request"}, 405, headers={"Allow": "GET, POST"})
        except RegistryError as exc:  # an oversized or truncated body
            return error_response(exc)
        except TokenRequestError as exc:
            headers = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if exc.status == 401 else None
            body: dict[str, Any] = {"error": exc.error, "error_description": exc.detail}
            if request.method == "GET":  # docker's GET clients read distribution's error format
                body["errors"] = [
                    {"code": "UNAUTHORIZED" if exc.status == 401 else "DENIED", "message": exc.detail}
                ]
            return JSONResponse(body, exc.status, headers=headers)

    async def _get(self, request: Request) -> Response:
        """Docker's token flow: Basic credentials (or none), ``scope`` and ``service`` in the query."""
        query = request.query_params
        self._check_service(query.get("service"))
        account = ANONYMOUS
        authorization = request.headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise TokenRequestError(401, "invalid_client", "Basic credentials expected")
            try:
                user = await self.logins.user_of(value.strip())
            except ValueError as exc:
                raise TokenRequestError(401, "invalid_client", str(exc)) from None
            if user is None:
                log.info("token refused: bad credentials")
                raise TokenRequestError(401, "invalid_client", "invalid username or password")
            account = user
        asked_account = query.get("account")
        if asked_account and account != ANONYMOUS and asked_account != account:
            raise TokenRequestError(400, "invalid_request", "account does not match the credentials")
        grants = self.grant(account, parse_scopes(query.getlist("scope")))
        offline = query.get("offline_token", "").lower() == "true" and account != ANONYMOUS
        return self._answer(account, grants, refresh=offline, include_token_field=True)

    async def _post(self, request: Request) -> Response:
        """OAuth2: ``grant_type=password`` or ``refresh_token`` in a form body."""
        body = await read_limited(request, MAX_FORM, "token request")
        form = {
            k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        self._check_service(form.get("service"))
        if not form.get("client_id"):
            raise TokenRequestError(400, "invalid_request", "client_id is required")
        grant_type = form.get("grant_type")
        scopes = parse_scopes([form.get("scope", "")])
        if grant_type == "password":
            user, password = form.get("username", ""), form.get("password", "")
            if not user or user == ANONYMOUS or not await self.logins.check(user, password):
                log.info("token refused: bad credentials for %r", user[:64])
                raise TokenRequestError(400, "invalid_grant", "invalid username or password")
            refresh = form.get("access_type") == "offline"
            return self._answer(user, self.grant(user, scopes), refresh=refresh)
        if grant_type == "refresh_token":
            user = self._redeem(form.get("refresh_token", ""))
            return self._answer(
                user, self.grant(user, scopes), refresh=False, echo_refresh=form["refresh_token"]
            )
        raise TokenRequestError(400, "unsupported_grant_type", "grant_type must be password or refresh_token")

    def _check_service(self, service: str | None) -> None:
        if service and service != self.service:
            raise TokenRequestError(400, "invalid_request", f"this token server serves {self.service!r}")

    # -- grants and tokens ---------------------------------------------------------------
    def grant(self, account: str, scopes: list[tuple[str, str, frozenset[str]]]) -> list[Grant]:
        """What was asked, narrowed to what the ACL allows; scopes with nothing left are left out."""
        grants: list[Grant] = []
        for kind, name, asked in scopes:
            if kind == "registry" and name == "catalog":
                if account != ANONYMOUS:  # pier filters the listing by the ACL itself
                    grants.append(Grant("registry", "catalog", ("*",)))
                continue
            if kind != "repository":
                continue
            wanted = ACTIONS if "*" in asked else asked & ACTIONS
            allowed = wanted & self.acl.allowed(account, name)
            if allowed:
                grants.append(Grant("repository", name, tuple(a for a in ACTION_ORDER if a in allowed)))
        return grants

    def _answer(
        self,
        account: str,
        grants: list[Grant],
        *,
        refresh: bool,
        include_token_field: bool = False,
        echo_refresh: str | None = None,
    ) -> Response:
        subject = "" if account == ANONYMOUS else account
        token, issued = self.key.mint(self.issuer, self.service, subject, grants, self.lifetime)
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": int(self.lifetime),
            "issued_at": datetime.datetime.fromtimestamp(issued, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scope": " ".join(grant.scope() for grant in grants),
        }
        if include_token_field:
            body["token"] = token
        if refresh:
            body["refresh_token"] = self._refresh_token(account)
        elif echo_refresh:
            body["refresh_token"] = echo_refresh
        log.info("token for %s: %s", account, body["scope"] or "(no access)")
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _refresh_token(self, user: str) -> str:
        fingerprint = self.htpasswd.fingerprint(user)
        if fingerprint is None:  # removed since the (cached) login: nothing to refresh for
            raise TokenRequestError(400, "invalid_grant", "unknown user")
        now = int(time.time())
        return self.key.sign(
            {
                "iss": self.issuer,
                "sub": user,
                "aud": self.refresh_audience,
                "iat": now,
                "exp": now + int(self.refresh_lifetime),
                "jti": uuid.uuid4().hex,
                "pwd": fingerprint,
            }
        )

    def _redeem(self, token: str) -> str:
        invalid = TokenRequestError(400, "invalid_grant", "refresh token invalid, expired or revoked")
        if not token or len(token) > 16 * 1024:
            raise invalid
        try:
            claims = jwt.decode(
                token,
                self.key.public_key,
                algorithms=[self.key.algorithm],
                audience=self.refresh_audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError:
            raise invalid from None
        user = claims["sub"]
        # Removed users and changed passwords revoke every refresh token issued before.
        fingerprint = self.htpasswd.fingerprint(user) if isinstance(user, str) else None
        if fingerprint is None or fingerprint != claims.get("pwd"):
            raise invalid
        return user
