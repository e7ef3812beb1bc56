"""Credentials from docker's config, so an existing ``docker login`` just works.

Reads ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``): a per-registry
``credHelpers`` entry, else the global ``credsStore``, else the base64 ``auth`` (or
``username``/``password``) of ``auths``. Docker Hub is filed under its legacy key
``https://index.docker.io/v1/``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

from .transport import Credentials

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class CredentialsError(Exception):
    pass


def config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(Path.home(), ".docker")
    return Path(directory) / "config.json"


def _keys(domain: str) -> tuple[str, ...]:
    if domain == "docker.io":
        return DOCKER_HUB_KEYS
    return (domain, f"https://{domain}", f"http://{domain}", f"https://{domain}/v1/", f"https://{domain}/v2/")


def _from_helper(helper: str, server: str) -> Credentials | None:
    executable = shutil.which(f"docker-credential-{helper}")
    if executable is None:
        raise CredentialsError(f"docker credential helper docker-credential-{helper} is not installed")
    result = subprocess.run([executable, "get"], input=server, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return None  # the helper has nothing for this server
    answer = json.loads(result.stdout)
    return Credentials(answer.get("Username", ""), answer.get("Secret", ""))


def lookup(domain: str) -> Credentials | None:
    """The credentials docker would use for ``domain``, or None for anonymous access."""
    path = config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CredentialsError(f"{path} is not valid JSON: {exc}") from None
    keys = _keys(domain)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return _from_helper(helpers[key], key)
    auths = config.get("auths") or {}
    for key in keys:
        entry = auths.get(key)
        if not entry:
            continue
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except ValueError:
                raise CredentialsError(f"{path}: the auth entry for {key} is not valid base64") from None
            return Credentials(username, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    if config.get("credsStore"):
        return _from_helper(config["credsStore"], keys[0])
    return None
