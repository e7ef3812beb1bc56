"""The ``pier`` command: the client's commands, and ``serve`` from the registry package."""

from __future__ import annotations

import argparse
import sys

from .content_store import ContentStore
from .credentials import CredentialsError, lookup
from .pull import Platform, PullError, pull
from .reference import Reference, ReferenceError, parse_reference
from .run import RunError, RunOptions, run
from .unpack import UnsafeLayer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pier", description="pier: an OCI registry and its client")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    commands.add_parser("serve", help="run the registry (see `pier serve --help`)", add_help=False)
    pull_command = commands.add_parser("pull", help="pull an image into the local store")
    pull_command.add_argument("reference", help="image reference, as docker writes it")
    pull_command.add_argument(
        "--platform", help="os/arch[/variant] to pick from an index (default: this machine)"
    )
    pull_command.add_argument("--insecure", action="store_true", help="plain HTTP (always used for loopback)")
    pull_command.add_argument("--parallel", type=int, default=4, help="layers downloaded at once (default 4)")
    pull_command.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    run_command = commands.add_parser("run", help="run an image's process under runc or crun")
    run_command.add_argument("reference", help="image reference (pulled if missing)")
    run_command.add_argument("command", nargs=argparse.REMAINDER, help="command instead of the image's Cmd")
    run_command.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE (or KEY from here)")
    run_command.add_argument("-w", "--workdir", help="working directory inside the container")
    run_command.add_argument("-u", "--user", help="user[:group] or uid[:gid]")
    run_command.add_argument("-v", "--volume", action="append", default=[], help="/host:/container[:ro]")
    run_command.add_argument("--network", default="none", choices=["none", "host"], help="default: none")
    run_command.add_argument("--memory", help="memory limit, e.g. 512m")
    run_command.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    run_command.add_argument("--pids-limit", type=int, help="maximum number of processes")
    run_command.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run_command.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run_command.add_argument("--name", help="container name (default: generated)")
    run_command.add_argument("--rm", action="store_true", help="delete the container when it exits")
    run_command.add_argument("--runtime", help="OCI runtime on PATH (default: runc, then crun)")
    run_command.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    run_command.add_argument("--insecure", action="store_true", help="plain HTTP when pulling")
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


def _local_image(store: ContentStore, reference: Reference) -> str | None:
    if reference.digest:
        return reference.digest if store.has(reference.digest) else None
    return store.get_ref(reference.name, reference.tag or "latest")


def _run(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    platform = Platform.parse(args.platform) if args.platform else Platform.host()
    store = ContentStore()
    digest = _local_image(store, reference)
    if digest is None:
        image = pull(reference, store, platform, insecure=args.insecure, credentials=lookup(reference.domain))
        digest = image.index_digest or image.digest
    options = RunOptions(
        command=args.command,
        env=args.env,
        workdir=args.workdir,
        user=args.user,
        volumes=args.volume,
        network=args.network,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        interactive=args.interactive,
        tty=args.tty,
        name=args.name,
        remove=args.rm,
        runtime=args.runtime,
    )
    return run(store, digest, platform, options)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from registry.cli import main as registry_main

        return registry_main(argv)
    args = _parser().parse_args(argv)
    try:
        return _run(args) if args.subcommand == "run" else _pull(args)
    except (ReferenceError, PullError, CredentialsError, RunError, UnsafeLayer) as exc:
        print(f"pier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pier: interrupted; partial downloads are kept and resume on the next pull", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
