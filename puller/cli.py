"""The ``pier`` command: the client's commands, and ``serve``, ``gc`` and ``fsck`` from the registry.

Every failure a user can cause or meet (a bad reference, an unreachable registry, a
digest mismatch, a hostile layer) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .containers import Containers, is_running
from .content_store import ContentStore
from .credentials import Credentials, CredentialsError, erase, lookup
from .credentials import save as save_credentials
from .errors import PierError
from .gc import collect_garbage
from .image import ImageError, is_index, load_image, local_digest, read_json, shareable
from .layout import load, save
from .platforms import Platform
from .reference import Reference, ReferenceError, parse_reference
from .rootfs import unpack_image
from .run import RunOptions, run

if TYPE_CHECKING:
    from .transport import Transport

# httpx and rich take a third of a second to import: commands that move bytes import
# them when they run, so local commands (images, unpack, ps) start at once.


def _insecure(args: argparse.Namespace, host: str) -> bool:
    """Plain HTTP: asked for, or the host is listed in PIER_INSECURE_REGISTRIES (loopback always is)."""
    listed = {h.strip() for h in os.environ.get("PIER_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return bool(getattr(args, "insecure", False)) or host in listed


def _transport(args: argparse.Namespace, reference: Reference) -> Transport:
    from .transport import Transport

    return Transport(
        reference.api_host,
        insecure=_insecure(args, reference.domain),
        credentials=lookup(reference.domain),
        ca_cert=_ca_cert(args),
    )


def _ca_cert(args: argparse.Namespace) -> str | None:
    """A CA file to trust besides the system's: ``--ca-cert`` or ``PIER_CA_CERT``."""
    return getattr(args, "ca_cert", None) or os.environ.get("PIER_CA_CERT") or None


def _platform(args: argparse.Namespace) -> Platform:
    return Platform.parse(args.platform) if getattr(args, "platform", None) else Platform.host()


def _local(store: ContentStore, text: str) -> tuple[Reference, str]:
    reference = parse_reference(text)
    digest = local_digest(store, reference)
    if digest is None:
        raise ImageError(
            f"{reference.familiar()} is not in the local store: pier pull {reference.familiar()}"
        )
    return reference, digest


def cmd_pull(args: argparse.Namespace) -> int:
    from .progress import transfer_progress
    from .pull import pull

    reference = parse_reference(args.reference)
    platform = _platform(args)
    with transfer_progress(args.quiet) as progress:
        image = pull(
            reference,
            ContentStore(),
            platform,
            insecure=_insecure(args, reference.domain),
            credentials=lookup(reference.domain),
            ca_cert=_ca_cert(args),
            parallel=args.parallel,
            progress=progress,
        )
    if args.quiet:
        print(image.index_digest or image.digest)
    else:
        print(f"Digest: {image.index_digest or image.digest}")
        print(f"Pulled {reference.familiar()} ({platform}, {image.size} bytes)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .progress import transfer_progress
    from .push import push_local

    store = ContentStore()
    reference, digest = _local(store, args.reference)
    transport = _transport(args, reference)
    try:
        with transfer_progress(args.quiet) as progress:
            pushed, note = push_local(
                store, digest, reference, _platform(args), transport, args.parallel, progress
            )
    finally:
        transport.close()
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    print(pushed if args.quiet else f"Pushed {reference.familiar()}\nDigest: {pushed}")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from .progress import transfer_progress
    from .push import copy_remote

    source, destination = parse_reference(args.source), parse_reference(args.destination)
    platform = Platform.parse(args.platform) if args.platform else None
    source_transport, destination_transport = _transport(args, source), _transport(args, destination)
    try:
        with transfer_progress(args.quiet) as progress:
            digest = copy_remote(
                source,
                destination,
                platform,
                source_transport,
                destination_transport,
                args.parallel,
                progress,
            )
    finally:
        source_transport.close()
        destination_transport.close()
    print(
        digest if args.quiet else f"Copied {source.familiar()} to {destination.familiar()}\nDigest: {digest}"
    )
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    store = ContentStore()
    _, digest = _local(store, args.source)
    target = parse_reference(args.target)
    if target.digest:
        raise ReferenceError(f"{args.target}: a tag cannot name a digest")
    store.set_ref(target.name, target.tag or "latest", digest)
    return 0


def _created(store: ContentStore, digest: str) -> str:
    try:
        image = load_image(store, digest, Platform.host(), need_layers=False)
    except (ImageError, KeyError, ValueError):
        return ""
    return str(image.config.get("created", ""))[:19].replace("T", " ")


def _size(store: ContentStore, digest: str) -> int:
    document = read_json(store, digest)
    if is_index(document):
        return sum(_size(store, e["digest"]) for e in document.get("manifests", []) if store.has(e["digest"]))
    return sum(int(d.get("size", 0)) for d in [document.get("config", {}), *document.get("layers", [])])


def cmd_images(args: argparse.Namespace) -> int:
    store = ContentStore()
    rows = [
        (Reference(*name.split("/", 1), tag, None).familiar().rsplit(":", 1)[0], tag, digest)
        for name, tag, digest in store.refs()
    ]
    if args.quiet:
        for digest in dict.fromkeys(row[2] for row in rows):
            print(digest)
        return 0
    table = [("REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED")]
    for repository, tag, digest in rows:
        table.append((repository, tag, digest[:19], _human(_size(store, digest)), _created(store, digest)))
    _print_table(table)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, as docker prints its lists."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{size}B"


def cmd_rmi(args: argparse.Namespace) -> int:
    store = ContentStore()
    for text in args.references:
        reference = parse_reference(text)
        if reference.digest and not reference.tag:
            names = [(n, t) for n, t, d in store.refs() if d == reference.digest and n == reference.name]
        else:
            names = [(reference.name, reference.tag or "latest")]
        if not any(store.delete_ref(name, tag) for name, tag in names):
            raise ImageError(f"{reference.familiar()}: no such image in the local store")
        print(f"Untagged: {reference.familiar()}")
    collected = collect_garbage(store)
    print(f"Deleted {collected.blobs} blobs ({_human(collected.bytes)}), {collected.trees} unpacked trees")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    store = ContentStore()
    reference, digest = _local(store, args.reference)
    document = read_json(store, digest)
    image = load_image(store, digest, _platform(args), need_layers=False)
    out = {
        "Name": str(reference),
        "Digest": digest,
        "Index": document if is_index(document) else None,
        "ManifestDigest": image.digest,
        "Manifest": image.manifest,
        "Config": image.config,
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    store = ContentStore()
    images = []
    for text in args.references:
        reference, digest = _local(store, text)
        digest, note = shareable(store, digest, _platform(args))
        if note:
            print(f"note: {note}", file=sys.stderr)
        images.append((reference, digest))
    save(store, images, Path(args.output))
    for reference, digest in images:
        print(f"Saved {reference.familiar()} ({digest}) to {args.output}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    store = ContentStore()
    with store.lock():
        loaded = load(store, Path(args.directory), args.name)
    for item in loaded:
        name = item.reference.familiar() if item.reference else "(untagged: give --name to tag it)"
        print(f"Loaded {name} {item.digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from .transport import Transport

    domain = parse_reference(f"{args.server}/probe").domain if args.server else "docker.io"
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = args.password or getpass.getpass("Password: ")
    credentials = Credentials(username, password)
    host = "registry-1.docker.io" if domain == "docker.io" else domain
    transport = Transport(
        host, insecure=_insecure(args, domain), credentials=credentials, ca_cert=_ca_cert(args)
    )
    try:
        transport.check_login()
    finally:
        transport.close()
    where = save_credentials(domain, credentials)
    print(f"Login Succeeded (credentials saved in {where})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    domain = parse_reference(f"{args.server}/probe").domain if args.server else "docker.io"
    if not erase(domain):
        raise CredentialsError(f"not logged in to {domain}")
    print(f"Removed login credentials for {domain}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    store = ContentStore()
    _, digest = _local(store, args.reference)
    image = load_image(store, digest, _platform(args))
    target = Path(args.directory)
    if target.exists() and any(target.iterdir()):
        raise ImageError(f"{target} is not empty: unpack into a new directory")
    with store.lock():  # shared: rmi cannot delete the layers while they are read
        unpack_image(store, image, target)
    if not args.quiet:
        print(f"Unpacked {len(image.layers)} layers into {target}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pull import pull

    reference = parse_reference(args.reference)
    platform = _platform(args)
    store = ContentStore()
    digest = local_digest(store, reference)
    try:
        if digest is None:
            raise ImageError(f"{reference.familiar()} is not in the local store")
        image = load_image(store, digest, platform)
    except ImageError:  # missing, or missing this platform's image: pull it, as docker does
        pulled = pull(
            reference,
            store,
            platform,
            insecure=_insecure(args, reference.domain),
            credentials=lookup(reference.domain),
            ca_cert=_ca_cert(args),
        )
        image = load_image(store, pulled.index_digest or pulled.digest, platform)
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
    return run(store, image, reference.familiar(), options)


def cmd_ps(args: argparse.Namespace) -> int:
    containers = Containers(ContentStore().root)
    table = [("CONTAINER", "IMAGE", "COMMAND", "CREATED", "STATUS")]
    for _, state in containers.all():
        running = is_running(state)
        if not running and not args.all:
            continue
        status = "running" if running else f"exited ({state.exit_code})"
        created = datetime.datetime.fromtimestamp(state.created).strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(state.command)[:40]
        table.append((state.id, state.image, command, created, status))
    _print_table(table)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    containers = Containers(ContentStore().root)
    for name in args.containers:
        containers.remove(name, force=args.force)
        print(name)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pier", description="pier: an OCI registry and its client")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    commands.add_parser("serve", help="run the registry (see `pier serve --help`)", add_help=False)
    commands.add_parser("gc", help="free unreferenced registry blobs (see `pier gc --help`)", add_help=False)
    commands.add_parser("fsck", help="verify the registry's storage (see `pier fsck --help`)", add_help=False)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def transfer_options(sub: argparse.ArgumentParser, platform_help: str) -> None:
        sub.add_argument("--platform", help=platform_help)
        sub.add_argument(
            "--insecure", action="store_true", help="plain HTTP (default for loopback without a CA)"
        )
        sub.add_argument("--ca-cert", help="a CA certificate to trust besides the system's (or PIER_CA_CERT)")
        sub.add_argument("--parallel", type=int, default=4, help="blobs moved at once (default 4)")
        sub.add_argument("-q", "--quiet", action="store_true", help="print only the digest")

    sub = command("pull", cmd_pull, "pull an image into the local store")
    sub.add_argument("reference", help="image reference, as docker writes it")
    transfer_options(sub, "os/arch[/variant] to pick from an index (default: this machine)")

    sub = command("push", cmd_push, "push an image from the local store to its registry")
    sub.add_argument("reference", help="local image reference (see pier tag)")
    transfer_options(sub, "the image pushed when only part of an index is local (default: this machine)")

    sub = command("copy", cmd_copy, "copy an image from one registry to another, without storing it")
    sub.add_argument("source")
    sub.add_argument("destination")
    transfer_options(sub, "copy only this platform's image of an index (default: every platform)")

    sub = command("tag", cmd_tag, "give a local image another name")
    sub.add_argument("source")
    sub.add_argument("target")

    sub = command("images", cmd_images, "list the local images")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only digests")

    sub = command("rmi", cmd_rmi, "remove local images and the blobs nothing else uses")
    sub.add_argument("references", nargs="+")

    sub = command("inspect", cmd_inspect, "print a local image's manifest and config as JSON")
    sub.add_argument("reference")
    sub.add_argument("--platform", help="the platform's image of an index (default: this machine)")

    sub = command("save", cmd_save, "write local images to an OCI image layout directory")
    sub.add_argument("references", nargs="+")
    sub.add_argument("-o", "--output", required=True, help="layout directory (created, or added to)")
    sub.add_argument("--platform", help="the image saved when only part of an index is local")

    sub = command("load", cmd_load, "import the images of an OCI image layout directory")
    sub.add_argument("directory")
    sub.add_argument("--name", help="repository for images the layout tags without one, e.g. myhost/app")

    for name, handler, help in (
        ("login", cmd_login, "check credentials with a registry and save them in docker's config"),
        ("logout", cmd_logout, "remove a registry's credentials from docker's config"),
    ):
        sub = command(name, handler, help)
        sub.add_argument("server", nargs="?", help="registry host (default: Docker Hub)")
        if name == "login":
            sub.add_argument("-u", "--username")
            sub.add_argument(
                "-p", "--password", help="prefer --password-stdin: arguments are visible to others"
            )
            sub.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
            sub.add_argument("--insecure", action="store_true", help="plain HTTP")
            sub.add_argument("--ca-cert", help="a CA certificate to trust besides the system's")

    sub = command("unpack", cmd_unpack, "write a local image's root filesystem into a directory")
    sub.add_argument("reference")
    sub.add_argument("directory", help="a new or empty directory")
    sub.add_argument("--platform", help="the platform's image of an index (default: this machine)")
    sub.add_argument("-q", "--quiet", action="store_true")

    sub = command("run", cmd_run, "run an image's process under runc or crun")
    sub.add_argument("reference", help="image reference (pulled if missing)")
    sub.add_argument("command", nargs=argparse.REMAINDER, help="command instead of the image's Cmd")
    sub.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE (or KEY from here)")
    sub.add_argument("-w", "--workdir", help="working directory inside the container")
    sub.add_argument("-u", "--user", help="user[:group] or uid[:gid]")
    sub.add_argument("-v", "--volume", action="append", default=[], help="/host:/container[:ro]")
    sub.add_argument("--network", default="none", choices=["none", "host"], help="default: none")
    sub.add_argument("--memory", help="memory limit, e.g. 512m")
    sub.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    sub.add_argument("--pids-limit", type=int, help="maximum number of processes")
    sub.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    sub.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    sub.add_argument("--name", help="container name (default: generated)")
    sub.add_argument("--rm", action="store_true", help="delete the container when it exits")
    sub.add_argument("--runtime", help="OCI runtime on PATH (default: chosen by the cgroup layout)")
    sub.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    sub.add_argument("--insecure", action="store_true", help="plain HTTP when pulling")

    sub = command("ps", cmd_ps, "list containers")
    sub.add_argument("-a", "--all", action="store_true", help="also those that exited")

    sub = command("rm", cmd_rm, "remove containers kept without --rm")
    sub.add_argument("containers", nargs="+")
    sub.add_argument("-f", "--force", action="store_true", help="also a running one")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["serve"], ["gc"], ["fsck"]):
        from registry.cli import main as registry_main

        return registry_main(argv)
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except PierError as exc:
        print(f"pier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pier: interrupted; partial downloads are kept and resume on the next pull", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
