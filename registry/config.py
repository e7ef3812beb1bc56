"""Server settings: one typed object, read once, from defaults < file < environment < flags.

A config file is TOML (``.toml``) or YAML (``.yaml``/``.yml``) with the same keys as
below; each key also has an environment variable ``PIER_<KEY>`` (``PIER_ADDR``,
``PIER_ROOT``, ``PIER_MAX_BLOB_SIZE``...) and a flag ``--<key-with-dashes>``. Sizes
accept docker's units (``MB`` = 10^6; ``MiB`` or ``M`` = 2^20) and durations ``s``/``m``/``h``/``d``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from oci import units


def default_root() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "pier", "registry")


@dataclass
class Settings:
    addr: str = "127.0.0.1:5000"
    root: str = field(default_factory=default_root)
    delete_enabled: bool = True
    max_manifest_size: int = 4 * 1024 * 1024
    max_blob_size: int = 100 * 1024**3  # 0 turns the limit off
    upload_timeout: float = 24 * 3600.0
    chunk_min_length: int = 1024 * 1024  # advertised; smaller chunks are still accepted
    catalog_page_size: int = 1000  # default and maximum `n` for /v2/_catalog
    max_inflight_requests: int = 1024  # beyond it: 429 with Retry-After (health and metrics never count)
    max_inflight_per_client: int = 256  # per user, or per address when anonymous: one client cannot take all
    fsync: bool = True
    workers: int = 1
    access_log: bool = True
    log_level: str = "info"
    auth: str = ""  # none, htpasswd or token ("": token with token_key/trust, htpasswd with htpasswd)
    htpasswd: str = ""  # bcrypt htpasswd file: the users (Basic auth, or the token server's logins)
    tls_cert: str = ""  # PEM certificate chain: serve HTTPS (with tls_key)
    tls_key: str = ""  # PEM private key of tls_cert
    acl: str = ""  # TOML file of ordered access rules (default with htpasswd: users may do all)
    token_key: str = ""  # PEM private key (RSA, EC P-256/P-384): serve tokens at /auth/token
    token_trust: str = ""  # PEM files (comma-separated) of certificates/public keys of token issuers
    token_realm: str = ""  # the token server's URL in challenges ("": this server's /auth/token)
    token_service: str = "pier"  # the registry's name: the tokens' audience
    token_issuer: str = "pier"  # the tokens' issuer, minted and expected
    token_lifetime: float = 300.0
    token_refresh_lifetime: float = 30 * 86400.0
    token_only: bool = False  # serve only /auth/token (a token server for other registries)
    max_header_size: int = 64 * 1024  # request line plus headers; beyond it: 431
    max_headers: int = 100
    header_timeout: float = 30.0  # from a request's first byte to the end of its headers
    idle_timeout: float = 60.0  # a request body, or the reading of a response, stalled this long
    max_upload_sessions: int = 100  # open upload sessions per repository; beyond it: 429
    max_upload_sessions_total: int = 10000  # open upload sessions in the whole store
    max_upload_sessions_per_client: int = 1000  # per user, or per address when anonymous
    s3_endpoint_url: str = ""  # S3-compatible store ("": AWS_ENDPOINT_URL, else AWS)
    s3_region: str = ""  # ("": AWS_DEFAULT_REGION / ~/.aws)
    s3_addressing_style: str = "auto"  # auto, path or virtual
    s3_part_size: int = 8 * 1024 * 1024  # multipart part size; memory per upload is ~5 parts
    redirect: bool = False  # answer blob GETs with 307 to a presigned URL (S3)
    redirect_expiry: float = 1200.0  # lifetime of those URLs
    proxy: str = ""  # mirror upstreams, comma-separated: URL (serves bare names) or PREFIX=URL
    proxy_ttl: float = 300.0  # a cached tag is served this long before it is checked upstream
    proxy_timeout: float = 30.0  # connect/read timeout towards upstreams
    proxy_auth_file: str = ""  # docker config.json with the upstreams' logins (by host)
    proxy_cache_size: int = 0  # mirrored content beyond this is evicted, least recently pulled first
    log_format: str = "text"  # text (a readable line per request) or json (one JSON object per line)
    metrics: bool = True  # serve Prometheus metrics at /metrics
    shutdown_delay: float = 0.0  # on SIGTERM: /readyz answers 503 this long before the listener closes
    shutdown_timeout: float = 30.0  # then in-flight requests get this long to finish
    notifications: str = ""  # webhook endpoints: a JSON list in the environment, a list of tables in a file

    @property
    def host(self) -> str:
        return split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return split_addr(self.addr)[1]


# How a setting's text is read, beyond what its default's type says: "size", "duration", or
# its allowed values separated by "|". The flags, their help and the checks come from here.
FIELD_TYPES: dict[str, str] = {
    "max_manifest_size": "size",
    "max_blob_size": "size",
    "chunk_min_length": "size",
    "upload_timeout": "duration",
    "max_header_size": "size",
    "token_lifetime": "duration",
    "token_refresh_lifetime": "duration",
    "header_timeout": "duration",
    "idle_timeout": "duration",
    "s3_part_size": "size",
    "redirect_expiry": "duration",
    "proxy_ttl": "duration",
    "proxy_timeout": "duration",
    "proxy_cache_size": "size",
    "shutdown_delay": "duration",
    "shutdown_timeout": "duration",
    # Settings with a fixed set of values: checked wherever they come from.
    "log_level": "debug|info|warning|error",
    "log_format": "text|json",
    "s3_addressing_style": "auto|path|virtual",
}


class ConfigError(ValueError):
    pass


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_size(value: Any) -> int:
    """Bytes from an int or a size in docker's units (``64MB`` = 64x10^6, ``64MiB``/``64M`` = 64x2^20)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return units.parse_size(str(value))
    except ValueError:
        raise ConfigError(f"not a size: {value!r}") from None


def parse_duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"not a duration: {value!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@functools.cache
def _defaults() -> Settings:
    return Settings()


def kind(name: str) -> str:
    """How setting ``name`` is read: size, duration, bool, int, float, str, or "a|b|c" (its values)."""
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    default = getattr(_defaults(), name)
    return "bool" if isinstance(default, bool) else type(default).__name__


def format_default(name: str) -> str:
    """A setting's default as a user would write it (``100GiB``, ``24h``, ``true``): for --help."""
    value, how = getattr(_defaults(), name), kind(name)
    if how == "size" and value:
        exponent = next(e for e in (4, 3, 2, 1, 0) if value % 1024**e == 0)
        return f"{value // 1024**exponent}{['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"
    if how == "duration":
        units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
        unit, seconds = next((u, s) for u, s in units if value % s == 0) if value else ("s", 1)
        return f"{value / seconds:g}{unit}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _coerce(name: str, value: Any, source: str | None = None) -> Any:
    """Read one setting; a bad value fails naming where it came from (``--log-level``,
    ``PIER_LOG_LEVEL``, ``pier.toml: log_level``), so the user knows what to fix."""
    source = source or name
    if isinstance(value, list) and name == "proxy":  # a list in a config file
        return ",".join(str(item) for item in value)
    if name == "notifications" and not isinstance(value, str):  # tables in a config file
        return json.dumps(value)
    how = kind(name)
    try:
        if how == "size":
            return parse_size(value)
        if how == "duration":
            return parse_duration(value)
    except ConfigError:
        example = "4MiB, 100GiB" if how == "size" else "30s, 5m, 24h"
        raise ConfigError(f"{source} must be a {how} (e.g. {example}), not {value!r}") from None
    if how == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source} must be true or false, not {value!r}")
    if how == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source} must be an integer, not {value!r}") from None
    if how == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source} must be a number, not {value!r}") from None
    text = str(value)
    if "|" in how and text not in how.split("|"):
        raise ConfigError(f"{source} must be one of {', '.join(how.split('|'))}, not {value!r}")
    if name == "addr":
        try:
            split_addr(text)
        except ConfigError:
            raise ConfigError(f"{source} must be HOST:PORT, not {value!r}") from None
    return text


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
    names = {f.name for f in fields(Settings)}
    given: dict[str, tuple[Any, str]] = {}  # the winning value of each setting, and where it came from
    config_file = config_file or environ.get("PIER_CONFIG")
    if config_file:
        for key, value in read_file(config_file).items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            given[key] = (value, f"{config_file}: {key}")
    for name in names:
        env = environ.get(env_name(name))
        if env is not None:
            given[name] = (env, env_name(name))
    for name, value in (flags or {}).items():
        if value is not None:
            given[name] = (value, flag_name(name))
    settings = Settings(**{name: _coerce(name, value, source) for name, (value, source) in given.items()})
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both, or neither for plain HTTP")
    return settings


def env_name(name: str) -> str:
    return f"PIER_{name.upper()}"


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def to_environ(settings: Settings) -> dict[str, str]:
    """The settings as PIER_* variables, so worker processes read exactly the same."""
    env = {}
    for name, value in dataclasses.asdict(settings).items():
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
