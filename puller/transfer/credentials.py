"""Credentials from docker's config, so an existing ``docker login`` just works.

Reads ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``); what it means
(``credHelpers``, ``auths``, ``credsStore``, Docker Hub's legacy key) is
``oci.credentials``'. Here: the file, the helper programs, and the client's errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from oci import credentials as config_json
from oci.credentials import ConfigError, Helper
from oci.credentials import Login as Credentials

from ..errors import PierError

__all__ = ["Credentials", "CredentialsError", "config_path", "erase", "lookup", "save"]


class CredentialsError(PierError):
    pass


def config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(Path.home(), ".docker")
    return Path(directory) / "config.json"


def _run_helper(helper: str, action: str, payload: str, quiet_failure: bool = False) -> str | None:
    """``docker-credential-<helper> <action>`` fed ``payload``: its answer, or None when it has
    nothing (``quiet_failure``); a failure is an error otherwise."""
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
        if quiet_failure:
            return None
        message = result.stdout.strip() or result.stderr.strip()
        raise CredentialsError(f"docker-credential-{helper} {action} failed: {message[:200]}")
    return result.stdout


def _from_helper(helper: Helper) -> Credentials | None:
    answer = _run_helper(helper.name, "get", helper.server, quiet_failure=True)
    if answer is None:
        return None  # the helper has nothing for this server
    try:
        return config_json.parse_helper_answer(answer, helper.name)
    except ConfigError as exc:
        raise CredentialsError(str(exc)) from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return config_json.parse_config(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"{path} is not valid JSON: {exc}") from None
    except ConfigError as exc:
        raise CredentialsError(f"{path}: {exc}") from None


def lookup(domain: str) -> Credentials | None:
    """The credentials docker would use for ``domain``, or None for anonymous access."""
    path = config_path()
    config = _read_config(path)
    try:
        found = config_json.find_login(config, domain)
    except ConfigError as exc:
        raise CredentialsError(f"{path}: {exc}") from None
    return _from_helper(found) if isinstance(found, Helper) else found


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Atomically, readable by the owner only: it holds secrets."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent="\t")
    os.replace(temporary, path)


def _helper_for(config: dict[str, Any], key: str, path: Path) -> str | None:
    try:
        return config_json.helper_for(config, key)
    except ConfigError as exc:
        raise CredentialsError(f"{path}: {exc}") from None


def _auths(config: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        return config_json.section(config, "auths")
    except ConfigError as exc:
        raise CredentialsError(f"{path}: {exc}") from None


def save(domain: str, credentials: Credentials) -> str:
    """Save credentials where docker would (its helper if one is set); returns where."""
    path = config_path()
    config = _read_config(path)
    key = config_json.server_key(domain)
    helper = _helper_for(config, key, path)
    if helper:
        payload = {"ServerURL": key, "Username": credentials.username, "Secret": credentials.password}
        _run_helper(helper, "store", json.dumps(payload))
        return f"docker-credential-{helper}"
    config["auths"] = _auths(config, path)
    config["auths"][key] = {"auth": config_json.encode_auth(credentials.username, credentials.password)}
    _write_config(path, config)
    return str(path)


def erase(domain: str) -> bool:
    """Forget the credentials for ``domain``; False when there were none."""
    path = config_path()
    config = _read_config(path)
    key = config_json.server_key(domain)
    helper = _helper_for(config, key, path)
    if helper:
        _run_helper(helper, "erase", key)
        return True
    auths = _auths(config, path)
    found = [k for k in config_json.keys(domain) if k in auths]
    for k in found:
        del auths[k]
    if found:
        _write_config(path, config)
    return bool(found)
