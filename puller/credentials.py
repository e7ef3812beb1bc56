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
from dataclasses import dataclass
from pathlib import Path

from .errors import PierError

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    # A refresh token (docker's "identitytoken"): exchanged for access tokens with the
    # OAuth2 refresh grant instead of sending a password.
    identity_token: str | None = None


class CredentialsError(PierError):
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
    try:
        result = subprocess.run([executable, "get"], input=server, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CredentialsError(f"docker-credential-{helper} get failed: {exc}") from None
    if result.returncode != 0:
        return None  # the helper has nothing for this server
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = None
    fields = ("Username", "Secret")
    if not isinstance(answer, dict) or not all(isinstance(answer.get(f, ""), str) for f in fields):
        raise CredentialsError(f"docker-credential-{helper} get answered something other than credentials")
    if answer.get("Username") == "<token>":  # docker's convention for an identity token
        return Credentials("<token>", "", identity_token=answer.get("Secret", ""))
    return Credentials(answer.get("Username", ""), answer.get("Secret", ""))


def lookup(domain: str) -> Credentials | None:
    """The credentials docker would use for ``domain``, or None for anonymous access."""
    path = config_path()
    config = _read_config(path)
    keys = _keys(domain)
    helpers = _section(config, "credHelpers", path)
    for key in keys:
        if isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], key)
    auths = _section(config, "auths", path)
    for key in keys:
        entry = auths.get(key)
        if not entry:
            continue
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise CredentialsError(f"{path}: the auths entry for {key} is not an object of strings")
        if entry.get("identitytoken"):
            return Credentials(entry.get("username", ""), "", identity_token=str(entry["identitytoken"]))
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except ValueError:
                raise CredentialsError(f"{path}: the auth entry for {key} is not valid base64") from None
            return Credentials(username, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    if config.get("credsStore"):
        if not isinstance(config["credsStore"], str):
            raise CredentialsError(f"{path}: credsStore is not a helper name")
        return _from_helper(config["credsStore"], keys[0])
    return None


def _section(config: dict, name: str, path: Path) -> dict:
    section = config.get(name) or {}
    if not isinstance(section, dict):
        raise CredentialsError(f"{path}: {name} is not an object")
    return section


def _server_key(domain: str) -> str:
    return DOCKER_HUB_KEYS[0] if domain == "docker.io" else domain


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        raise CredentialsError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"{path} does not hold a JSON object")
    return config


def _write_config(path: Path, config: dict) -> None:
    """Atomically, readable by the owner only: it holds secrets."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent="\t")
    os.replace(temporary, path)


def _helper_for(config: dict, key: str, path: Path) -> str | None:
    helper = _section(config, "credHelpers", path).get(key) or config.get("credsStore") or None
    if helper is not None and not isinstance(helper, str):
        raise CredentialsError(f"{path}: the credential helper for {key} is not a helper name")
    return helper


def _run_helper(helper: str, action: str, payload: str) -> None:
    executable = shutil.which(f"docker-credential-{helper}")
    if executable is None:
        raise CredentialsError(f"docker credential helper docker-credential-{helper} is not installed")
    try:
        result = subprocess.run(
            [executable, action], input=payload, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CredentialsError(f"docker-credential-{helper} {action} failed: {exc}") from None
    if result.returncode != 0:
        message = result.stdout.strip() or result.stderr.strip()
        raise CredentialsError(f"docker-credential-{helper} {action} failed: {message[:200]}")


def save(domain: str, credentials: Credentials) -> str:
    """Save credentials where docker would (its helper if one is set); returns where."""
    path = config_path()
    config = _read_config(path)
    key = _server_key(domain)
    helper = _helper_for(config, key, path)
    if helper:
        payload = {"ServerURL": key, "Username": credentials.username, "Secret": credentials.password}
        _run_helper(helper, "store", json.dumps(payload))
        return f"docker-credential-{helper}"
    pair = f"{credentials.username}:{credentials.password}".encode()
    config["auths"] = _section(config, "auths", path)
    config["auths"][key] = {"auth": base64.b64encode(pair).decode()}
    _write_config(path, config)
    return str(path)


def erase(domain: str) -> bool:
    """Forget the credentials for ``domain``; False when there were none."""
    path = config_path()
    config = _read_config(path)
    key = _server_key(domain)
    helper = _helper_for(config, key, path)
    if helper:
        _run_helper(helper, "erase", key)
        return True
    auths = _section(config, "auths", path)
    found = [k for k in _keys(domain) if k in auths]
    for k in found:
        del auths[k]
    if found:
        _write_config(path, config)
    return bool(found)
