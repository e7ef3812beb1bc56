"""The ``pier`` command. ``pier serve`` runs the registry; ``pier gc`` and ``pier fsck`` tend its storage."""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
import sys

from .access import build as build_security
from .auth import AuthConfigError
from .config import ConfigError, Settings, load_settings
from .notifications import parse_endpoints
from .upstreams import DOCKER_HUB, parse_upstreams

_HELP = {
    "addr": "listen address HOST:PORT (default 127.0.0.1:5000)",
    "root": "data folder, or s3://BUCKET/PREFIX (default $XDG_DATA_HOME/pier/registry)",
    "delete_enabled": "allow DELETE of manifests, tags and blobs (true/false)",
    "max_manifest_size": "largest manifest accepted (default 4MiB)",
    "max_blob_size": "largest blob accepted, 0 for no limit (default 100GiB)",
    "upload_timeout": "abandoned upload sessions expire after this long (default 24h)",
    "chunk_min_length": "OCI-Chunk-Min-Length advertised to clients (default 1MiB)",
    "catalog_page_size": "default and largest page of /v2/_catalog (default 1000)",
    "max_inflight_requests": "concurrent requests per process before 429 (default 1024)",
    "fsync": "fsync every write before it becomes visible (default true)",
    "workers": "server processes sharing the store (default 1)",
    "access_log": "log one line per request (default true)",
    "log_level": "debug, info, warning or error (default info)",
    "auth": "none, htpasswd or token (default: token with --token-key/--token-trust, "
    "htpasswd with --htpasswd, else none)",
    "htpasswd": "bcrypt htpasswd file (htpasswd -B): the users; Basic auth unless --auth token",
    "token_key": "PEM private key (RSA or EC P-256/P-384): serve tokens at /auth/token, signed by it",
    "token_trust": "PEM certificates/public keys (comma-separated files) of trusted token issuers",
    "token_realm": "token server URL put in challenges (default: this server's /auth/token)",
    "token_service": "the registry's service name, the tokens' audience (default pier)",
    "token_issuer": "issuer of the tokens, minted and expected (default pier)",
    "token_lifetime": "lifetime of access tokens (default 5m)",
    "token_refresh_lifetime": "lifetime of refresh tokens (default 30d)",
    "token_only": "serve only the token endpoint, for other registries (true/false)",
    "tls_cert": "PEM certificate (chain) to serve HTTPS with; needs --tls-key",
    "tls_key": "PEM private key of --tls-cert",
    "acl": "TOML file of ordered access rules (default with --htpasswd: users may do everything)",
    "max_header_size": "largest request line plus headers, else 431 (default 64KiB)",
    "max_headers": "most header fields in one request, else 431 (default 100)",
    "header_timeout": "time a client has to send a request's headers (default 30s)",
    "idle_timeout": "close a request whose body or response stalls this long (default 60s)",
    "max_upload_sessions": "open upload sessions per repository, else 429 (default 100)",
    "s3_endpoint_url": "S3-compatible endpoint for --root s3://BUCKET/PREFIX (default: AWS_ENDPOINT_URL)",
    "s3_region": "S3 region (default: AWS_DEFAULT_REGION or ~/.aws/config)",
    "s3_addressing_style": "auto, path or virtual bucket addressing (default auto)",
    "s3_part_size": "S3 multipart part size, at least 5MiB (default 8MiB)",
    "redirect": "send blob GETs to a presigned storage URL with 307, on S3 (default false)",
    "redirect_expiry": "lifetime of those presigned URLs (default 20m)",
    "proxy": "mirror an upstream registry: --proxy alone for Docker Hub, --proxy URL (it also serves "
    "bare names, as a registry-mirrors target), --proxy PREFIX=URL (serves PREFIX/...); repeatable",
    "proxy_ttl": "serve a mirrored tag from the cache this long before checking upstream (default 5m)",
    "proxy_timeout": "timeout of requests to upstreams (default 30s)",
    "proxy_auth_file": "docker config.json holding logins for upstreams, by host",
    "proxy_cache_size": "evict mirrored images, least recently pulled first, past this size (0: never)",
    "log_format": "text (a readable line per request) or json (one JSON object per line)",
    "metrics": "serve Prometheus metrics at /metrics (default true)",
    "shutdown_delay": "on SIGTERM, report not ready at /readyz this long before closing (default 0s)",
    "shutdown_timeout": "then let in-flight requests finish for this long (default 30s)",
    "notifications": "webhook endpoints as a JSON list (in a config file: [[notifications]] tables)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pier", description="pier: an OCI image registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the registry",
        description="Run the registry. Settings: flags > PIER_* environment > config file > defaults.",
    )
    serve.add_argument("--config", help="TOML or YAML settings file (or PIER_CONFIG)")
    for field in dataclasses.fields(Settings):
        if field.name == "proxy":
            serve.add_argument(
                "--proxy", dest="proxy", action="append", nargs="?", const=DOCKER_HUB, help=_HELP["proxy"]
            )
            continue
        serve.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, help=_HELP[field.name])
    _maintenance_parsers(commands)
    return parser


def _storage_fields() -> list[str]:
    """The settings that say where storage is and how to open it: all gc and fsck need."""
    names = [f.name for f in dataclasses.fields(Settings)]
    return [n for n in names if n in ("root", "fsync") or n.startswith("s3_")]


def _maintenance_parsers(commands: argparse._SubParsersAction) -> None:
    gc = commands.add_parser(
        "gc",
        help="delete blobs nothing references (safe while the registry serves)",
        description="Delete unreferenced blobs older than the grace period, and dead layer links.",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would go, change nothing")
    gc.add_argument(
        "--delete-untagged", action="store_true", help="also delete manifests no tag or referrer reaches"
    )
    gc.add_argument("--grace", default="1h", help="keep anything written more recently (default 1h)")
    fsck = commands.add_parser(
        "fsck",
        help="verify every blob's digest and find missing content",
        description="Re-hash every blob; report corrupt and missing content. Exit 1 on problems.",
    )
    fsck.add_argument("--repair", action="store_true", help="move corrupt blobs to _quarantine/")
    gc.add_argument("-v", "--verbose", action="store_true", help="one line per blob, manifest and link")
    for sub in (gc, fsck):
        sub.add_argument("--config", help="TOML or YAML settings file (or PIER_CONFIG)")
        for name in _storage_fields():
            sub.add_argument(f"--{name.replace('_', '-')}", dest=name, help=_HELP.get(name))


def _maintain(args: argparse.Namespace) -> int:
    """``gc`` and ``fsck``: storage errors end as one line on stderr, never a traceback."""
    import asyncio

    from storage_backends import StorageError

    from .backend import open_driver
    from .config import parse_duration
    from .fsck import fsck
    from .gc import GCError, collect, summary

    try:
        settings = load_settings({n: getattr(args, n) for n in _storage_fields()}, config_file=args.config)
        grace = parse_duration(args.grace) if args.command == "gc" else 0.0
        local = settings.root.removeprefix("file://")
        if "://" not in local and not os.path.isdir(local):
            raise ConfigError(f"no registry data at {settings.root} (give --root or PIER_ROOT)")
    except (ConfigError, OSError) as exc:
        print(f"pier {args.command}: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        driver = open_driver(settings)
        try:
            if args.command == "gc":
                report = await collect(
                    driver, dry_run=args.dry_run, delete_untagged=args.delete_untagged, grace=grace
                )
                for line in report.details if args.verbose else []:
                    print(line)
                for line in report.warnings:
                    print(f"pier gc: warning: {line} (see pier fsck)", file=sys.stderr)
                print(summary(report, args.dry_run))
                return 0
            checked = await fsck(driver, repair=args.repair)
            print(checked.summary())
            return 1 if checked.problems else 0
        finally:
            await driver.close()

    try:
        return asyncio.run(run())
    except (StorageError, GCError, OSError, ValueError) as exc:
        print(f"pier {args.command}: {settings.root}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("gc", "fsck"):
        return _maintain(args)
    if args.command == "serve":
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
        if flags["proxy"] is not None:
            flags["proxy"] = ",".join(flags["proxy"])
        try:
            settings = load_settings(flags, config_file=args.config)
            build_security(settings)  # a bad auth setup fails here, once
            parse_upstreams(settings.proxy, settings.proxy_auth_file)  # and a bad proxy setting
            parse_endpoints(settings.notifications)  # and bad webhooks
            if settings.tls_cert:
                try:
                    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    context.load_cert_chain(settings.tls_cert, settings.tls_key)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"tls_cert/tls_key unusable: {exc}") from None
        except (ConfigError, AuthConfigError, OSError, ValueError) as exc:
            print(f"pier: {exc}", file=sys.stderr)
            return 2
        from .server import serve

        try:
            serve(settings)
        except (OSError, ValueError) as exc:
            print(f"pier: cannot serve from {settings.root}: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
