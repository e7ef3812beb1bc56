"""Answering a registry's 401: from its ``WWW-Authenticate`` header to what to send next.

The one path both the client and the mirror follow: pick the challenge (RFC 7235
grammar), then either Basic with the login, or the token flow, whose realm must pass
the never-downgrade rule before any credential is sent to it. Each side does its own
I/O and words its own errors from ``AuthFlowError.problem``.
"""

from __future__ import annotations

from typing import Literal

from .challenge import ChallengeError, choose
from .policy import PolicyError, check_realm
from .tokens import TokenRequest, token_request

Problem = Literal["challenge", "login-needed", "realm"]


class AuthFlowError(ValueError):
    """A challenge that cannot be answered; ``problem`` says why, ``str()`` gives the detail."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(detail)
        self.problem: Problem = problem


def respond(
    header: str,
    registry_url: str,
    scopes: list[str],
    *,
    has_login: bool,
    refresh_token: str | None = None,
) -> TokenRequest | None:
    """``None``: retry with the login as Basic credentials; else the token request to send.

    ``registry_url`` is the base URL really used (``http://`` only when the user chose plain
    HTTP). The token is asked for ``scopes`` together with any scope the challenge names.
    """
    try:
        challenge = choose(header)
    except ChallengeError as exc:
        raise AuthFlowError("challenge", str(exc)) from None
    if challenge.scheme == "basic":
        if not has_login:
            raise AuthFlowError("login-needed", "the registry asks for a login (Basic auth)")
        return None
    realm = challenge.params["realm"]
    try:
        check_realm(registry_url, realm)
    except PolicyError as exc:
        raise AuthFlowError("realm", str(exc)) from None
    wanted = sorted(set(challenge.params.get("scope", "").split()) | set(scopes))
    return token_request(
        realm,
        challenge.params.get("service"),
        wanted,
        has_login=has_login and not refresh_token,
        refresh_token=refresh_token,
    )
