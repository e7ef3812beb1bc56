"""Server settings: one typed object, read once, from defaults < file < environment < flags.

A config file is TOML (``.toml``) or YAML (``.yaml``/``.yml``) with the same keys as
``Settings``; each key also has an environment variable ``PIER_<KEY>`` (``PIER_ADDR``,
``PIER_ROOT``, ``PIER_MAX_BLOB_SIZE``...) and a flag ``--<key-with-dashes>``. Sizes
accept docker's units (``MB`` = 10^6; ``MiB`` or ``M`` = 2^20) and durations ``s``/``m``/``h``/``d``.
What each setting is, is declared once in registry/settings.py; this module only reads them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from .setting_kinds import ConfigError, parse_duration, parse_size, split_addr
from .settings import SETTINGS, Settings, default_root
from .settings_schema import env_name, flag_name

__all__ = [
    "SETTINGS",
    "ConfigError",
    "Settings",
    "default_root",
    "env_name",
    "flag_name",
    "format_default",
    "load_settings",
    "parse_duration",
    "parse_size",
    "read_file",
    "split_addr",
    "to_environ",
]


@functools.cache
def _defaults() -> Settings:
    return Settings()


def format_default(name: str) -> str:
    """A setting's default as a user would write it (``100GiB``, ``24h``, ``true``): for --help."""
    return SETTINGS[name].kind.write(getattr(_defaults(), name))


def read_file(path: str) -> dict[str, Any]:
    text = Path(path).read_bytes()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text.decode())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return data


def load_settings(
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources in order of precedence; unknown keys are an error, not ignored."""
    environ = dict(os.environ) if environ is None else environ
    given: dict[str, tuple[Any, str]] = {}  # the winning value of each setting, and where it came from
    config_file = config_file or environ.get("PIER_CONFIG")
    if config_file:
        for key, value in read_file(config_file).items():
            key = key.replace("-", "_")
            if key not in SETTINGS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            given[key] = (value, f"{config_file}: {key}")
    for name, declared in SETTINGS.items():
        env = environ.get(declared.env)
        if env is not None:
            given[name] = (env, declared.env)
    for name, value in (flags or {}).items():
        if value is not None:
            given[name] = (value, flag_name(name))
    settings = Settings(
        **{name: SETTINGS[name].kind.parse(value, source) for name, (value, source) in given.items()}
    )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both, or neither for plain HTTP")
    return settings


def to_environ(settings: Settings) -> dict[str, str]:
    """The settings as PIER_* variables, so worker processes read exactly the same."""
    env = {}
    for name, value in dataclasses.asdict(settings).items():
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
