"""The registry's settings, each declared once: kind, default, ``--help`` text and README text.

Each key is also the config file's key, ``PIER_<KEY>`` and ``--<key-with-dashes>``
(registry/settings_schema.py). registry/config.py reads them from those sources,
registry/cli.py makes the flags, and ``python -m registry.settings_readme`` prints the
README's table (tests/test_settings_table.py fails when README.md differs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .setting_kinds import (
    ADDRESS,
    BOOLEAN,
    COMMA_LIST,
    DURATION,
    INTEGER,
    JSON_TEXT,
    SIZE,
    TEXT,
    Choice,
    split_addr,
)
from .settings_schema import Setting, declared, setting
from .upstream_config import DOCKER_HUB

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
NO_LIMIT = "(`0` = no limit)"


def default_root() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "pier", "registry")


@dataclass
class Settings:
    addr: str = setting(ADDRESS, "127.0.0.1:5000", "listen address")
    root: str = setting(
        TEXT,
        default_root,
        "data folder or S3 bucket",
        doc="data folder, or S3 bucket and key prefix "
        "(see [Storage on S3](#storage-on-s3-many-replicas-one-store))",
        placeholder="DIR|s3://BUCKET/PREFIX",
        help_default="$XDG_DATA_HOME/pier/registry",
        doc_default="`$XDG_DATA_HOME/pier/registry` (`~/.local/share/pier/registry`)",
    )
    delete_enabled: bool = setting(
        BOOLEAN,
        True,
        "allow DELETE of manifests, tags and blobs",
        doc="allow deletes (otherwise 405 `UNSUPPORTED`)",
    )
    max_manifest_size: int = setting(
        SIZE, 4 * MiB, "largest manifest accepted", doc="larger manifests get 413 `MANIFEST_INVALID`"
    )
    max_blob_size: int = setting(
        SIZE,
        100 * GiB,
        "largest blob accepted, 0 for no limit",
        doc="larger blobs get 413 `SIZE_INVALID`; `0` = no limit",
    )
    upload_timeout: float = setting(
        DURATION,
        24 * HOUR,
        "abandoned upload sessions expire after this long",
        doc="idle upload sessions expire and are purged",
    )
    chunk_min_length: int = setting(
        SIZE,
        1 * MiB,
        "OCI-Chunk-Min-Length advertised to clients",
        doc="`OCI-Chunk-Min-Length` advertised to clients (smaller chunks are still accepted)",
    )
    catalog_page_size: int = setting(
        INTEGER,
        1000,
        "default and largest page of /v2/_catalog",
        doc="default and largest `n` of `/v2/_catalog`",
    )
    max_inflight_requests: int = setting(
        INTEGER,
        1024,
        "concurrent requests per process before 429",
        doc="per process; beyond it 429 `TOOMANYREQUESTS` + `Retry-After` (`/healthz`, `/readyz`, "
        "`/metrics` never count; `0` = no limit); see [Limits](#limits-one-client-cannot-take-the-registry)",
    )
    max_inflight_per_client: int = setting(
        INTEGER,
        256,
        "concurrent requests per user (address if anonymous), else 429",
        doc="the same per client (user, or address when anonymous), per process (`0` = no limit)",
    )
    fsync: bool = setting(
        BOOLEAN,
        True,
        "fsync every write before it becomes visible",
        doc="fsync data before it becomes visible",
    )
    workers: int = setting(INTEGER, 1, "server processes sharing the store")
    access_log: bool = setting(
        BOOLEAN,
        True,
        "log one line per request",
        doc="one log line per request, on standard output (see [Logs](#logs))",
    )
    log_format: str = setting(
        Choice("text", "json"),
        "text",
        "a readable line per request, or one JSON object per line",
        doc="`text`, or `json`: one JSON object per line, access and server logs alike",
    )
    log_level: str = setting(
        Choice("debug", "info", "warning", "error"),
        "info",
        "how much the server logs",
        doc="`debug`, `info`, `warning`, `error`",
    )
    metrics: bool = setting(
        BOOLEAN,
        True,
        "serve Prometheus metrics at /metrics",
        doc="serve Prometheus metrics at `/metrics` (see [Metrics](#metrics))",
    )
    shutdown_delay: float = setting(
        DURATION,
        0.0,
        "on SIGTERM, report not ready at /readyz this long before closing",
        doc="on SIGTERM, `/readyz` answers 503 this long before the listener closes",
    )
    shutdown_timeout: float = setting(
        DURATION,
        30.0,
        "then let in-flight requests finish for this long",
        doc="then requests in flight get this long to finish",
    )
    notifications: str = setting(
        JSON_TEXT,
        "",
        "webhook endpoints as a JSON list (in a config file: [[notifications]] tables)",
        doc="webhook endpoints: `[[notifications]]` tables in the file, a JSON list otherwise "
        "(see [Webhooks](#webhooks))",
    )
    auth: str = setting(
        TEXT,
        "",
        "how clients log in",
        doc="`none`, `htpasswd` (Basic) or `token` (bearer tokens); "
        "see [Access control and TLS](#access-control-and-tls)",
        placeholder="none|htpasswd|token",
        help_default="token with --token-key/--token-trust, htpasswd with --htpasswd, else none",
        doc_default="`token` with `token_key`/`token_trust`, else `htpasswd` with `htpasswd`, else `none`",
    )
    htpasswd: str = setting(
        TEXT,
        "",
        "bcrypt htpasswd file (htpasswd -B): the users; Basic auth unless --auth token",
        doc="bcrypt htpasswd file: the users",
        placeholder="FILE",
    )
    acl: str = setting(
        TEXT,
        "",
        "TOML file of ordered access rules",
        placeholder="FILE",
        help_default="with --htpasswd, users may do everything",
        doc_default="(users may do all)",
    )
    token_key: str = setting(
        TEXT,
        "",
        "PEM private key (RSA or EC P-256/P-384): serve tokens at /auth/token, signed by it",
        doc="PEM private key (RSA ≥ 2048 or EC P-256/P-384): serve tokens at `/auth/token`, signed with it",
        placeholder="FILE",
    )
    token_trust: str = setting(
        TEXT,
        "",
        "PEM certificates/public keys of trusted token issuers",
        doc="PEM certificates or public keys of token issuers to trust",
        placeholder="FILE[,FILE]",
        doc_default="(`token_key`'s public key)",
    )
    token_realm: str = setting(
        TEXT,
        "",
        "token server URL put in challenges",
        doc="the token server named in challenges",
        placeholder="URL",
        help_default="this server's /auth/token",
        doc_default="this server's `/auth/token`",
    )
    token_service: str = setting(
        TEXT,
        "pier",
        "the registry's service name, the tokens' audience",
        doc="the registry's name: the tokens' `aud`, minted and required",
        placeholder="NAME",
    )
    token_issuer: str = setting(
        TEXT,
        "pier",
        "issuer of the tokens, minted and expected",
        doc="the tokens' `iss`, minted and required",
        placeholder="NAME",
    )
    token_lifetime: float = setting(DURATION, 5 * MINUTE, "lifetime of access tokens")
    token_refresh_lifetime: float = setting(DURATION, 30 * DAY, "lifetime of refresh tokens")
    token_only: bool = setting(
        BOOLEAN,
        False,
        "serve only the token endpoint, for other registries",
        doc="serve only `/auth/token` (a token server for other registries)",
    )
    tls_cert: str = setting(
        TEXT,
        "",
        "PEM certificate (chain) to serve HTTPS with; needs --tls-key",
        doc="PEM certificate chain: serve HTTPS (with `tls_key`)",
        placeholder="FILE",
        doc_default="(none: plain HTTP)",
    )
    tls_key: str = setting(
        TEXT,
        "",
        "PEM private key of --tls-cert",
        doc="PEM private key of `tls_cert`",
        placeholder="FILE",
        doc_default="(none: plain HTTP)",
    )
    max_header_size: int = setting(
        SIZE,
        64 * KiB,
        "largest request line plus headers, else 431",
        doc="request line plus headers; beyond it, 431 and the connection closes",
    )
    max_headers: int = setting(
        INTEGER,
        100,
        "most header fields in one request, else 431",
        doc="header fields in one request; beyond it, 431 and the connection closes",
    )
    header_timeout: float = setting(
        DURATION,
        30.0,
        "time a client has to send a request's headers",
        doc="time to send a request's headers (from its first byte, or from connecting); then 408",
    )
    idle_timeout: float = setting(
        DURATION,
        60.0,
        "close a request whose body or response stalls this long",
        doc="a request body that stops arriving, or a response the client stops reading, for this long: "
        "connection closed (server time never counts)",
    )
    max_upload_sessions: int = setting(
        INTEGER,
        100,
        "open upload sessions per repository, else 429",
        doc=f"open upload sessions per repository; beyond it 429 `TOOMANYREQUESTS` {NO_LIMIT}",
    )
    max_upload_sessions_per_client: int = setting(
        INTEGER,
        1000,
        "open upload sessions per user (address if anonymous)",
        doc="open upload sessions per client (user, or address when anonymous), across repositories "
        f"and replicas {NO_LIMIT}",
    )
    max_upload_sessions_total: int = setting(
        INTEGER,
        10000,
        "open upload sessions in the whole store, else 429",
        doc=f"open upload sessions in the whole store {NO_LIMIT}",
    )
    s3_endpoint_url: str = setting(
        TEXT,
        "",
        "S3-compatible endpoint for --root s3://...",
        doc="an S3-compatible store (SeaweedFS, MinIO, Ceph…)",
        placeholder="URL",
        help_default="AWS_ENDPOINT_URL",
        doc_default="`AWS_ENDPOINT_URL`, else AWS",
    )
    s3_region: str = setting(
        TEXT,
        "",
        "S3 region",
        doc="the bucket's region",
        placeholder="REGION",
        help_default="AWS_DEFAULT_REGION or ~/.aws/config",
        doc_default="`AWS_DEFAULT_REGION` / `~/.aws/config`",
    )
    s3_addressing_style: str = setting(
        Choice("auto", "path", "virtual"),
        "auto",
        "bucket addressing (auto: boto3's choice)",
        doc="`path` (`host/bucket/key`) or `virtual` (`bucket.host/key`); `auto` is boto3's choice",
    )
    s3_part_size: int = setting(
        SIZE,
        8 * MiB,
        "S3 multipart part size, at least 5MiB",
        doc="multipart part size (≥ 5 MiB); an upload holds at most 5 parts in memory",
    )
    redirect: bool = setting(
        BOOLEAN,
        False,
        "send blob GETs to a presigned storage URL with 307, on S3",
        doc="on S3, blob `GET`s answer 307 to a presigned URL: clients download straight from S3",
    )
    redirect_expiry: float = setting(DURATION, 20 * MINUTE, "lifetime of those presigned URLs")
    proxy: str = setting(
        COMMA_LIST,
        "",
        "mirror an upstream registry: --proxy alone for Docker Hub, --proxy URL (it also serves "
        "bare names, as a registry-mirrors target), --proxy PREFIX=URL (serves PREFIX/...); repeatable",
        doc="upstream registries to mirror, comma-separated in the file or environment (a TOML/YAML list "
        "works too); see [Mirror](#mirror-a-pull-through-cache)",
        placeholder="[PREFIX=]URL",
        doc_default="(none: not a mirror)",
        bare=DOCKER_HUB,
        repeatable=True,
    )
    proxy_ttl: float = setting(
        DURATION,
        5 * MINUTE,
        "serve a mirrored tag from the cache this long before checking upstream",
        doc="a mirrored tag is served from the cache this long, then checked upstream with a `HEAD`",
    )
    proxy_timeout: float = setting(
        DURATION,
        30.0,
        "timeout of requests to upstreams",
        doc="connect and read timeout towards upstreams",
    )
    proxy_auth_file: str = setting(
        TEXT,
        "",
        "docker config.json holding logins for upstreams, by host",
        doc="docker `config.json` holding the upstreams' logins, by host",
        placeholder="FILE",
        doc_default="(none: anonymous)",
    )
    proxy_cache_size: int = setting(
        SIZE,
        0,
        "evict mirrored images, least recently pulled first, past this size (0: never)",
        doc="past this, mirrored images are evicted, least recently pulled first",
        doc_default="`0` (no limit)",
    )

    ui: bool = setting(
        BOOLEAN,
        True,
        "serve the web UI at /ui",
        doc="serve the web UI at `/ui` (see [Web UI](#web-ui-and-team-governance))",
    )
    ui_session_key: str = setting(
        TEXT,
        "",
        "file holding the secret that signs web UI sessions (replicas must share it)",
        doc="file holding the secret that signs web UI sessions; replicas behind one address must share it",
        placeholder="FILE",
        doc_default="(a random key per process: sessions end on restart)",
    )
    admins: str = setting(
        COMMA_LIST,
        "",
        "users who may read the audit log, run retention and override immutable tags",
        doc="users who may read the audit log, run retention and override immutable tags "
        "(on an open registry, everyone)",
        placeholder="USER[,USER]",
    )
    quotas: str = setting(
        JSON_TEXT,
        "",
        "storage quotas per namespace or repository as a JSON list (in a config file: [[quotas]] tables)",
        doc="bytes per namespace or repository: `[[quotas]]` tables in the file, a JSON list otherwise",
    )
    retention: str = setting(
        JSON_TEXT,
        "",
        "retention rules as a JSON list (in a config file: [[retention]] tables)",
        doc="what tags and untagged manifests may go: `[[retention]]` tables in the file, "
        "a JSON list otherwise",
    )
    retention_interval: float = setting(
        DURATION,
        0.0,
        "run the retention rules this often (0: only on demand, pier retention)",
        doc="run the retention rules this often, on one replica at a time",
        doc_default="`0` (only on demand: `pier retention`)",
    )
    immutable_tags: str = setting(
        COMMA_LIST,
        "",
        "tags that may never move: TAG or REPOSITORY:TAG globs, e.g. v*,team-a/*:release-*",
        doc="tags that may never be moved, and deleted only by an admin: `TAG` or `REPOSITORY:TAG` globs",
        placeholder="[REPO:]TAG",
    )
    audit: bool = setting(
        BOOLEAN,
        True,
        "keep an audit log of pushes, tag moves, deletes, failed logins and policy actions",
        doc="record pushes, tag moves, deletes, failed logins and policy actions in storage",
    )
    index_refresh: float = setting(
        DURATION,
        60.0,
        "re-read the store for the web UI and quota usage this often",
        doc="the web UI's index of repositories and tags is read again from storage this often "
        "(this process's own changes show at once)",
    )
    pull_stats_interval: float = setting(
        DURATION,
        10.0,
        "write pull counts to storage this often",
        doc="pull counts and last-pulled times are written to storage this often, in one file per process",
    )

    @property
    def host(self) -> str:
        return split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return split_addr(self.addr)[1]


SETTINGS: Mapping[str, Setting[Any]] = declared(Settings)
