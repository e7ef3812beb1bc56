"""The ``pier`` command: the client's commands, and ``serve`` from the registry package."""

from __future__ import annotations

import argparse
import sys

from .content_store import ContentStore
from .credentials import CredentialsError, lookup
from .pull import Platform, PullError, pull
from .reference import ReferenceError, parse_reference


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pier", description="pier: an OCI registry and its client")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the registry (see `pier serve --help`)", add_help=False)
    pull_command = commands.add_parser("pull", help="pull an image into the local store")
    pull_command.add_argument("reference", help="image reference, as docker writes it")
    pull_command.add_argument(
        "--platform", help="os/arch[/variant] to pick from an index (default: this machine)"
    )
    pull_command.add_argument("--insecure", action="store_true", help="plain HTTP (always used for loopback)")
    pull_command.add_argument("--parallel", type=int, default=4, help="layers downloaded at once (default 4)")
    pull_command.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    return parser


def _plain_progress(digest: str, state: str, done: int, total: int) -> None:
    if state != "downloading":
        print(f"{digest[7:19]}: {state} ({total} bytes)", flush=True)


def _pull(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    platform = Platform.parse(args.platform) if args.platform else Platform.host()
    progress = None if args.quiet else _plain_progress
    credentials = lookup(reference.domain)
    image = pull(
        reference,
        ContentStore(),
        platform,
        insecure=args.insecure,
        credentials=credentials,
        parallel=args.parallel,
        progress=progress,
    )
    if args.quiet:
        print(image.index_digest or image.digest)
    else:
        print(f"Digest: {image.index_digest or image.digest}")
        print(f"Pulled {reference.familiar()} ({platform}, {image.size} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from registry.cli import main as registry_main

        return registry_main(argv)
    args = _parser().parse_args(argv)
    try:
        return _pull(args)
    except (ReferenceError, PullError, CredentialsError) as exc:
        print(f"pier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pier: interrupted; partial downloads are kept and resume on the next pull", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
