"""The ``pier`` command. ``pier serve`` runs the registry; ``pier gc`` and ``pier fsck`` tend its storage."""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
import sys
from typing import Any

from .access import build as build_security
from .auth import AuthConfigError
from .config import ConfigError, Settings, env_name, flag_name, format_default, kind, load_settings
from .notifications import parse_endpoints
from .upstreams import DOCKER_HUB, parse_upstreams

# What each setting means, for --help. The flag, its PIER_* variable, its placeholder and its
# default are added from registry/config.py (Settings, FIELD_TYPES), so they cannot drift from
# it. A tuple gives a text setting its placeholder; a text that states its own default keeps it.
_HELP: dict[str, str | tuple[str, str]] = {
    "addr": ("HOST:PORT", "listen address"),
    "root": ("DIR|s3://BUCKET/PREFIX", "data folder or S3 bucket (default: $XDG_DATA_HOME/pier/registry)"),
    "delete_enabled": "allow DELETE of manifests, tags and blobs",
    "max_manifest_size": "largest manifest accepted",
    "max_blob_size": "largest blob accepted, 0 for no limit",
    "upload_timeout": "abandoned upload sessions expire after this long",
    "chunk_min_length": "OCI-Chunk-Min-Length advertised to clients",
    "catalog_page_size": "default and largest page of /v2/_catalog",
    "max_inflight_requests": "concurrent requests per process before 429",
    "max_inflight_per_client": "concurrent requests per user (address if anonymous), else 429",
    "fsync": "fsync every write before it becomes visible",
    "workers": "server processes sharing the store",
    "access_log": "log one line per request",
    "log_level": "how much the server logs",
    "auth": (
        "none|htpasswd|token",
        "how clients log in (default: token with --token-key/--token-trust, "
        "htpasswd with --htpasswd, else none)",
    ),
    "htpasswd": ("FILE", "bcrypt htpasswd file (htpasswd -B): the users; Basic auth unless --auth token"),
    "token_key": (
        "FILE",
        "PEM private key (RSA or EC P-256/P-384): serve tokens at /auth/token, signed by it",
    ),
    "token_trust": ("FILE[,FILE]", "PEM certificates/public keys of trusted token issuers"),
    "token_realm": ("URL", "token server URL put in challenges (default: this server's /auth/token)"),
    "token_service": ("NAME", "the registry's service name, the tokens' audience"),
    "token_issuer": ("NAME", "issuer of the tokens, minted and expected"),
    "token_lifetime": "lifetime of access tokens",
    "token_refresh_lifetime": "lifetime of refresh tokens",
    "token_only": "serve only the token endpoint, for other registries",
    "tls_cert": ("FILE", "PEM certificate (chain) to serve HTTPS with; needs --tls-key"),
    "tls_key": ("FILE", "PEM private key of --tls-cert"),
    "acl": ("FILE", "TOML file of ordered access rules (default: with --htpasswd, users may do everything)"),
    "max_header_size": "largest request line plus headers, else 431",
    "max_headers": "most header fields in one request, else 431",
    "header_timeout": "time a client has to send a request's headers",
    "idle_timeout": "close a request whose body or response stalls this long",
    "max_upload_sessions": "open upload sessions per repository, else 429",
    "max_upload_sessions_total": "open upload sessions in the whole store, else 429",
    "max_upload_sessions_per_client": "open upload sessions per user (address if anonymous)",
    "s3_endpoint_url": ("URL", "S3-compatible endpoint for --root s3://... (default: AWS_ENDPOINT_URL)"),
    "s3_region": ("REGION", "S3 region (default: AWS_DEFAULT_REGION or ~/.aws/config)"),
    "s3_addressing_style": "bucket addressing (auto: boto3's choice)",
    "s3_part_size": "S3 multipart part size, at least 5MiB",
    "redirect": "send blob GETs to a presigned storage URL with 307, on S3",
    "redirect_expiry": "lifetime of those presigned URLs",
    "proxy": (
        "[PREFIX=]URL",
        "mirror an upstream registry: --proxy alone for Docker Hub, --proxy URL (it also serves "
        "bare names, as a registry-mirrors target), --proxy PREFIX=URL (serves PREFIX/...); repeatable",
    ),
    "proxy_ttl": "serve a mirrored tag from the cache this long before checking upstream",
    "proxy_timeout": "timeout of requests to upstreams",
    "proxy_auth_file": ("FILE", "docker config.json holding logins for upstreams, by host"),
    "proxy_cache_size": "evict mirrored images, least recently pulled first, past this size (0: never)",
    "log_format": "a readable line per request, or one JSON object per line",
    "metrics": "serve Prometheus metrics at /metrics",
    "shutdown_delay": "on SIGTERM, report not ready at /readyz this long before closing",
    "shutdown_timeout": "then let in-flight requests finish for this long",
    "notifications": (
        "JSON",
        "webhook endpoints as a JSON list (in a config file: [[notifications]] tables)",
    ),
}
_PLACEHOLDERS = {"size": "SIZE", "duration": "DURATION", "int": "N", "float": "NUMBER", "str": "VALUE"}


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--roo`` is not ``--root``), and a mistyped flag reported with the
    usage of the subcommand it was given to, not the top level's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = getattr(parsed, "parser", self)
            parser.error(f"unrecognized arguments: {' '.join(extra)} (see '{parser.prog} --help')")
        return parsed


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of setting ``name``, with its help generated from config.py: placeholder,
    PIER_* variable and default. A boolean also works bare, as ``=false`` and as ``--no-X``."""
    entry = _HELP[name]
    placeholder, text = entry if isinstance(entry, tuple) else (None, entry)
    how = kind(name)
    if "(default: " in text:  # a default that depends on other settings, said in words
        text = text.replace("(default: ", f"(env {env_name(name)}, default: ", 1)
    else:
        default = format_default(name)
        text += f" (env {env_name(name)}" + (f", default {default})" if default else ")")
    options: dict[str, Any] = {"dest": name, "help": text.replace("%", "%%")}
    if name == "proxy":  # repeatable; bare: Docker Hub
        options.update(action="append", nargs="?", const=DOCKER_HUB, metavar=placeholder)
    elif how == "bool":
        options.update(nargs="?", const="true", metavar="true|false")
        parser.add_argument(
            f"--no-{flag_name(name)[2:]}",
            dest=name,
            action="store_const",
            const="false",
            help=argparse.SUPPRESS,
        )
    else:
        options["metavar"] = placeholder or ("|" in how and how) or _PLACEHOLDERS.get(how, "VALUE")
    parser.add_argument(flag_name(name), **options)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pier", description="pier: an OCI image registry")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the registry",
        usage="%(prog)s [OPTIONS]",
        description="Run the registry. Settings: flags > PIER_* environment > config file > defaults. "
        "A true/false setting is on with its bare flag (--redirect), off with --no-redirect "
        "or --redirect=false.",
    )
    serve.set_defaults(parser=serve)
    serve.add_argument("--config", metavar="FILE", help="TOML or YAML settings file (env PIER_CONFIG)")
    for field in dataclasses.fields(Settings):
        _add_setting(serve, field.name)
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
    gc.add_argument(
        "--grace", default="1h", metavar="DURATION", help="keep anything written more recently (default 1h)"
    )
    fsck = commands.add_parser(
        "fsck",
        help="verify every blob's digest and find missing content",
        description="Re-hash every blob; report corrupt and missing content. Exit 1 on problems.",
    )
    fsck.add_argument("--repair", action="store_true", help="move corrupt blobs to _quarantine/")
    gc.add_argument("-v", "--verbose", action="store_true", help="one line per blob, manifest and link")
    for sub in (gc, fsck):
        sub.set_defaults(parser=sub)
        sub.add_argument("--config", metavar="FILE", help="TOML or YAML settings file (env PIER_CONFIG)")
        for name in _storage_fields():
            _add_setting(sub, name)


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
        try:
            grace = parse_duration(args.grace) if args.command == "gc" else 0.0
        except ConfigError:
            raise ConfigError(f"--grace must be a duration (e.g. 30m, 1h), not {args.grace!r}") from None
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
            print(f"pier serve: {exc}", file=sys.stderr)
            return 2
        from .server import ListenError, serve

        try:
            serve(settings)
        except ListenError as exc:  # e.g. the port is taken: uvicorn never starts
            print(f"pier serve: {exc}", file=sys.stderr)
            return 2
        except (OSError, ValueError) as exc:
            print(f"pier serve: cannot serve from {settings.root}: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
