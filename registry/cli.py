"""The ``pier`` command. ``pier serve`` runs the registry; ``pier gc`` and ``pier fsck`` tend its storage."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import TYPE_CHECKING, Any

from .access import build as build_security
from .auth import AuthConfigError
from .config import SETTINGS, ConfigError, Settings, format_default, load_settings
from .notifications import parse_endpoints
from .setting_kinds import Boolean
from .upstream_config import parse_upstreams

if TYPE_CHECKING:
    from storage_backends import StorageDriver


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--roo`` is not ``--root``), and a mistyped flag reported with the
    usage of the subcommand it was given to, not the top level's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]  # one signature for argparse's overloads
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = getattr(parsed, "parser", self)
            parser.error(f"unrecognized arguments: {' '.join(extra)} (see '{parser.prog} --help')")
        return parsed


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of setting ``name``, its help made from its declaration (registry/settings.py):
    placeholder, PIER_* variable and default. A boolean also works bare, as ``=false`` and as
    ``--no-X``; a repeatable flag collects its values in a list."""
    declared = SETTINGS[name]
    text = declared.help + f" (env {declared.env}"
    if declared.help_default:  # a default that depends on other settings, said in words
        text += f", default: {declared.help_default})"
    else:
        default = format_default(name)
        text += f", default {default})" if default else ")"
    options: dict[str, Any] = {"dest": name, "help": text.replace("%", "%%"), "metavar": declared.metavar}
    if declared.bare_value is not None:
        options.update(nargs="?", const=declared.bare_value)
    if declared.repeatable:
        options["action"] = "append"
    if isinstance(declared.kind, Boolean):
        parser.add_argument(
            f"--no-{declared.flag[2:]}",
            dest=name,
            action="store_const",
            const="false",
            help=argparse.SUPPRESS,
        )
    parser.add_argument(declared.flag, **options)


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
    for name in SETTINGS:
        _add_setting(serve, name)
    _maintenance_parsers(commands)
    return parser


def _storage_fields() -> list[str]:
    """The settings that say where storage is and how to open it: all gc and fsck need."""
    return [n for n in SETTINGS if n in ("root", "fsync") or n.startswith("s3_")]


def _policy_fields() -> list[str]:
    """What ``pier retention`` reads besides storage: the rules, and what they never delete."""
    return ["retention", "immutable_tags"]


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
    retention = commands.add_parser(
        "retention",
        help="apply the retention rules now (safe while the registry serves)",
        description="Delete the tags and untagged manifests the retention rules (the `retention` setting) "
        "let go, then report; `pier gc` frees their blobs.",
    )
    retention.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    retention.add_argument("--json", action="store_true", help="one JSON object per item")
    audit = commands.add_parser(
        "audit",
        help="print the audit log, newest first",
        description="Print the audit log (pushes, tag moves, deletes, failed logins, policy actions).",
    )
    audit.add_argument("--repository", metavar="NAME", help="only this repository's entries")
    audit.add_argument("--user", metavar="USER", help="only this user's entries")
    audit.add_argument("--action", metavar="ACTION", help="only entries of this action (push, delete, ...)")
    audit.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries (default 100)")
    audit.add_argument("--json", action="store_true", help="JSON lines, for export")
    for sub in (gc, fsck, retention, audit):
        sub.set_defaults(parser=sub)
        sub.add_argument("--config", metavar="FILE", help="TOML or YAML settings file (env PIER_CONFIG)")
        for name in _storage_fields():
            _add_setting(sub, name)
    for name in _policy_fields():
        _add_setting(retention, name)


def _maintain(args: argparse.Namespace) -> int:
    """``gc`` and ``fsck``: storage errors end as one line on stderr, never a traceback."""
    import asyncio

    from storage_backends import StorageError

    from .backend import open_driver
    from .config import parse_duration
    from .fsck import fsck
    from .gc import GCError, collect, summary

    fields = _storage_fields() + (_policy_fields() if args.command == "retention" else [])
    try:
        settings = load_settings({n: getattr(args, n) for n in fields}, config_file=args.config)
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
            if args.command in ("retention", "audit"):
                return await _govern(args, settings, driver)
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


def _printable(text: str) -> str:
    """Control characters (escape sequences, newlines) shown as escapes, never sent to a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


async def _govern(args: argparse.Namespace, settings: Settings, driver: StorageDriver) -> int:
    """``pier retention`` and ``pier audit``, straight on the storage the servers share."""
    import json

    from .governance.audit import ACTIONS, AuditLog, Query
    from .governance.policy import parse_policies
    from .governance.service import Governance
    from .store import RegistryStore

    if args.command == "audit":
        if args.action and args.action not in ACTIONS:
            raise ConfigError(f"--action must be one of {', '.join(ACTIONS)}")
        query = Query(
            repository=args.repository, user=args.user, action=args.action, limit=max(1, args.limit)
        )
        for entry in await AuditLog(driver).query(query):
            if args.json:
                print(json.dumps(entry))
            else:
                what = entry.get("tag") or entry.get("digest") or entry.get("detail", "")
                who = entry.get("user") or "anonymous"
                where = f"{who}@{entry['addr']}"
                line = f"{entry['time']}  {entry['action']:<17} {entry['repository']}  {what}  {where}"
                print(_printable(line))  # user names come from strangers: no terminal escapes
        return 0
    policies = parse_policies("", settings.retention, settings.immutable_tags, "")
    if not policies.retention:
        raise ConfigError("no retention rules: set `retention` in the config file (or PIER_RETENTION)")
    governance = Governance(RegistryStore(driver), policies)
    if args.dry_run:
        planned = await governance.retention_plan()
        items = planned.items
    else:
        planned, items = await governance.run_retention()
    for item in items:
        if args.json:
            print(json.dumps(item.as_dict()))
        else:
            print(f"{item.kind:<8} {item.repository}:{item.name}  ({item.reason})")
    verb = "would delete" if args.dry_run else "deleted"
    tags = sum(1 for i in items if i.kind == "tag")
    print(
        f"retention: {planned.repositories} repositories governed; {verb} {tags} tags and "
        f"{len(items) - tags} untagged manifests"
        + ("" if args.dry_run else "; run `pier gc` to free their blobs"),
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("gc", "fsck", "retention", "audit"):
        return _maintain(args)
    if args.command == "serve":
        flags = {name: getattr(args, name) for name in SETTINGS}
        for name, declared in SETTINGS.items():
            if declared.repeatable and flags[name] is not None:
                flags[name] = ",".join(flags[name])
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
