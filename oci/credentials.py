"""docker's ``config.json``: which login it holds for a registry, read as docker reads it.

A per-registry ``credHelpers`` entry comes first, then the base64 ``auth`` (or the
``identitytoken``, or ``username``/``password``) of ``auths``, then the global
``credsStore``. A registry is filed under several spellings (``host``,
``https://host``, ``https://host/v1/``...); Docker Hub under its legacy key
``https://index.docker.io/v1/``, whichever of its host names is asked for. Reading the
file and running a helper are each side's I/O; what the document means is here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .jsonsafe import UntrustedJSONError, loads
from .reference import DEFAULT_DOMAIN, is_docker_hub

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_KEYS = (DOCKER_HUB_KEY, "index.docker.io", "docker.io", "registry-1.docker.io")
IDENTITY_TOKEN_USER = "<token>"  # a helper's username for an identity token, by docker's convention


class ConfigError(ValueError):
    """A ``config.json`` (or a helper's answer) docker could not use either.

    ``problem`` says which rule broke: ``json``, ``document``, ``section``, ``entry``,
    ``base64``, ``helper`` or ``answer``; ``key`` is the registry key concerned, if any.
    """

    def __init__(self, message: str, problem: str, key: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.key = key


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    # A refresh token (docker's "identitytoken"): exchanged for access tokens with the
    # OAuth2 refresh grant instead of sending a password.
    identity_token: str | None = None


@dataclass(frozen=True)
class Helper:
    """The login is kept by ``docker-credential-<name>``: ask it with ``get`` and ``server``."""

    name: str
    server: str


def parse_config(text: bytes | str) -> dict[str, Any]:
    """The JSON object of a ``config.json``; ``ConfigError`` for anything else."""
    try:
        config = loads(text)
    except UntrustedJSONError as exc:
        raise ConfigError(f"is not valid JSON: {exc}", "json") from None
    if not isinstance(config, dict):
        raise ConfigError("does not hold a JSON object", "document")
    return config


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """``auths`` or ``credHelpers``: an object, empty when absent."""
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} is not an object", "section")
    return value


def registry_host(host: str) -> str:
    """docker's name of a registry host: every host of Docker Hub is ``docker.io``."""
    return DEFAULT_DOMAIN if is_docker_hub(host) else host


def keys(host: str) -> tuple[str, ...]:
    """The keys a login for ``host`` may be filed under, the preferred first."""
    host = registry_host(host)
    if host == DEFAULT_DOMAIN:
        return DOCKER_HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def server_key(host: str) -> str:
    """The key docker files a new login for ``host`` under."""
    return keys(host)[0]


def decode_auth(value: str, key: str) -> tuple[str, str]:
    """(username, password) of an ``auth`` entry: base64 of ``username:password``."""
    try:
        username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        raise ConfigError(f"the auth entry for {key[:80]} is not valid base64", "base64", key) from None
    return username, password


def encode_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def helper_for(config: dict[str, Any], key: str) -> str | None:
    """The helper that keeps (or is to keep) the login filed under ``key``, if any."""
    helper = section(config, "credHelpers").get(key) or config.get("credsStore") or None
    if helper is not None and not isinstance(helper, str):
        raise ConfigError(f"the credential helper for {key[:80]} is not a helper name", "helper", key)
    return helper


def _from_entry(entry: object, key: str) -> Login | None:
    if not entry:
        return None
    if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
        raise ConfigError(f"the auths entry for {key[:80]} is not an object of strings", "entry", key)
    if entry.get("identitytoken"):
        return Login(entry.get("username", ""), "", identity_token=entry["identitytoken"])
    if entry.get("auth"):
        return Login(*decode_auth(entry["auth"], key))
    if entry.get("username"):
        return Login(entry["username"], entry.get("password", ""))
    return None


def find_login(config: dict[str, Any], host: str, *, helpers: bool = True) -> Login | Helper | None:
    """What docker would use for ``host``: a login, a helper to ask, or None (anonymous).

    ``helpers=False`` reads ``auths`` only, for a program that runs no helper (the mirror).
    """
    candidates = keys(host)
    if helpers:
        per_registry = section(config, "credHelpers")
        for key in candidates:
            if isinstance(per_registry.get(key), str):
                return Helper(per_registry[key], key)
    auths = section(config, "auths")
    for key in candidates:
        login = _from_entry(auths.get(key), key)
        if login is not None:
            return login
    store = config.get("credsStore")
    if helpers and store:
        if not isinstance(store, str):
            raise ConfigError("credsStore is not a helper name", "helper")
        return Helper(store, candidates[0])
    return None


def parse_helper_answer(answer: str, helper: str) -> Login:
    """The login in a helper's answer to ``get`` (``{"Username": ..., "Secret": ...}``)."""
    try:
        document = loads(answer)
    except UntrustedJSONError:
        document = None
    fields = ("Username", "Secret")
    if not isinstance(document, dict) or not all(isinstance(document.get(f, ""), str) for f in fields):
        message = f"docker-credential-{helper} get answered something other than credentials"
        raise ConfigError(message, "answer")
    username, secret = document.get("Username", ""), document.get("Secret", "")
    if username == IDENTITY_TOKEN_USER:
        return Login(IDENTITY_TOKEN_USER, "", identity_token=secret)
    return Login(username, secret)
