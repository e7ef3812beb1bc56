"""The ``pier`` command: the client's commands, and ``serve``, ``gc``, ``fsck``, ``retention`` and
``audit`` from the registry.

Every failure a user can cause or meet (a bad reference, an unreachable registry, a
digest mismatch, a hostile layer) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PierError
from .formatting import FormatError, Template
from .reference import InvalidReference, Reference, parse_reference
from .store.content_store import ContentStore, keep_layer_blobs
from .store.image import Image, ImageError, is_index, load_image, local_digest, read_json, shareable
from .store.platforms import Platform
from .text import human_size, plural, printable
from .transfer.credentials import Credentials, CredentialsError, erase, lookup
from .transfer.credentials import save as save_credentials
from .transfer.formats import FORMATS, output_format

if TYPE_CHECKING:
    from .build.builder import RemoteSteps
    from .build.cache import CachedStep
    from .prune import Collected
    from .store.inspection import Inspected
    from .transfer.transport import Transport

# httpx and rich take a third of a second to import, the unpacker and the runtime a tenth:
# each command imports what it needs when it runs, so every command starts at once.


def _insecure(args: argparse.Namespace, host: str) -> bool:
    """Plain HTTP: asked for, or the host is listed in PIER_INSECURE_REGISTRIES (loopback always is)."""
    listed = {h.strip() for h in os.environ.get("PIER_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return bool(getattr(args, "insecure", False)) or host in listed


def _transport(args: argparse.Namespace, reference: Reference) -> Transport:
    from .transfer.transport import Transport

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


def _pull_all_tags(args: argparse.Namespace) -> int:
    """docker's ``pull --all-tags``: every tag of the repository (all pages), pulled one by one."""
    from .transfer.remote import iter_tags

    repository = _repository(args.reference, "pull --all-tags")
    transport = _transport(args, repository)
    try:
        tags = list(iter_tags(transport, repository))
    finally:
        transport.close()
    if not tags:
        raise ImageError(f"{repository.name} has no tags")
    for tag in tags:
        one = argparse.Namespace(**{**vars(args), "reference": f"{repository.name}:{tag}", "all_tags": False})
        code = cmd_pull(one)
        if code:
            return code
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    if getattr(args, "all_tags", False):
        return _pull_all_tags(args)
    from .progress import transfer_progress
    from .transfer.pull import pull

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
            unpack=not args.no_unpack,
        )
    if args.quiet:
        print(image.index_digest or image.digest)
    else:
        print(f"Digest: {image.index_digest or image.digest}")
        print(f"Pulled {reference.familiar()} ({platform}, {_human(image.size)})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .progress import transfer_progress
    from .transfer.push import push_local

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
    from .transfer.push import copy_remote

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
        raise InvalidReference(f"{args.target}: a tag cannot name a digest")
    store.set_ref(target.name, target.tag or "latest", digest)
    return 0


def _created(store: ContentStore, digest: str) -> str:
    try:
        image = load_image(store, digest, Platform.host(), need_layers=False)
    except (ImageError, KeyError, ValueError):
        return ""
    return str(image.config.get("created", ""))[:19].replace("T", " ")


def _size(store: ContentStore, digest: str) -> int:
    """Bytes of the image's distinct blobs: a layer two platforms of an index share counts once."""
    sizes: dict[str, int] = {}
    pending, seen = [digest], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        document = read_json(store, current)
        if is_index(document):
            pending += [e["digest"] for e in document.get("manifests", []) if store.has(e["digest"])]
        else:
            for blob in [document.get("config", {}), *document.get("layers", [])]:
                sizes[blob["digest"]] = int(blob.get("size", 0))
    return sum(sizes.values())


IMAGE_FIELDS = ("Repository", "Tag", "Digest", "Size", "Created")
CONTAINER_FIELDS = ("ID", "Image", "Digest", "Command", "Created", "Status", "ExitCode")


def _row_template(text: str | None, fields: tuple[str, ...]) -> Template | None:
    """A ``--format`` for list rows, checked against the fields at once: a typo fails on an empty list too."""
    if text is None:
        return None
    template = Template(text)
    template.render(dict.fromkeys(fields, ""))
    return template


def cmd_images(args: argparse.Namespace) -> int:
    template = _row_template(args.format, IMAGE_FIELDS)
    store = ContentStore()
    rows = [(_familiar(name, tag).rsplit(":", 1)[0], tag, digest) for name, tag, digest in store.refs()]
    if args.quiet:
        for digest in dict.fromkeys(row[2] for row in rows):
            print(digest)
        return 0
    if template is not None:
        for repository, tag, digest in rows:
            size, created = _human(_size(store, digest)), _created(store, digest)
            fields = {
                "Repository": repository,
                "Tag": tag,
                "Digest": digest,
                "Size": size,
                "Created": created,
            }
            print(template.render(fields))
        return 0
    table = [("REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED")]
    for repository, tag, digest in rows:
        table.append((repository, tag, digest[:19], _human(_size(store, digest)), _created(store, digest)))
    _print_table(table)
    return 0


def _familiar(name: str, tag: str) -> str:
    """A stored name (``domain/path``) and tag as the user would write them."""
    domain, path = name.split("/", 1)
    return Reference(domain, path, tag, None).familiar()


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, as docker prints its lists; untrusted text escaped."""
    cells = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _human(size: int) -> str:
    return human_size(size)


def cmd_rmi(args: argparse.Namespace) -> int:
    from .prune import collect_garbage
    from .untag import conflict, resolve

    store = ContentStore()
    for text in args.references:
        removal = resolve(store, text)
        refused = None if args.force else conflict(store, removal)
        if refused:
            raise ImageError(f"conflict: {refused}")
        for name, tag in removal.tags:
            if store.delete_ref(name, tag):
                print(f"Untagged: {_familiar(name, tag)}")
    _report_collected(collect_garbage(store))
    return 0


def _report_collected(collected: Collected) -> None:
    blobs, layers = plural(collected.blobs, "blob"), plural(collected.layers, "unpacked layer")
    print(f"Deleted {blobs} ({_human(collected.bytes)}), {layers} ({_human(collected.layer_bytes)})")


def cmd_prune(args: argparse.Namespace) -> int:
    from .prune import collect_garbage

    collected = collect_garbage(ContentStore(), build_cache=not args.build_cache)
    if args.build_cache:
        print(f"Dropped {plural(collected.cache_entries, 'build cache entry', 'build cache entries')}")
    _report_collected(collected)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .run.oci_runtime import RunError, cgroup_layout, find_runtime
    from .run.overlay import probe
    from .unpack.layer_store import LayerStore

    store = ContentStore()
    layers = LayerStore(store.root)
    unpacked = [info for info in map(layers.info, layers.all()) if info is not None]
    refused = probe(layers.root)
    try:
        runtime = find_runtime(None)
    except RunError as exc:
        runtime = f"none ({exc})"
    blobs = [store.path(digest).stat().st_size for digest in store.blobs()]
    rows = [
        ("Store", str(store.root)),
        ("Blobs", f"{len(blobs)} ({_human(sum(blobs))})"),
        ("Layers", f"{len(unpacked)} unpacked ({_human(sum(info.size for info in unpacked))})"),
        ("Layer blobs", "kept" if keep_layer_blobs() else "dropped once unpacked (PIER_KEEP_LAYER_BLOBS=0)"),
        ("Rootfs", "overlay (kernel overlayfs)" if refused is None else f"copy ({refused})"),
        ("Runtime", runtime),
        ("Cgroups", cgroup_layout()),
    ]
    for name, value in rows:
        print(f"{name + ':':<13}{value}")
    return 0


def _remote_text(args: argparse.Namespace) -> tuple[str, bool]:
    """The reference and whether to read it from its registry: ``--remote``, or skopeo's ``docker://``."""
    text = args.reference.removeprefix("docker://")
    return text, bool(args.remote) or text != args.reference


def cmd_inspect(args: argparse.Namespace) -> int:
    from .store.inspection import inspect_local

    if args.raw and args.format:
        raise FormatError("--format and --raw: choose one (--raw prints the bytes as they are)")
    template = Template(args.format) if args.format else None  # a bad template fails before any request
    text, remote = _remote_text(args)
    platform = None if args.raw and not args.config else _platform(args)
    found: Inspected
    if remote:
        from .transfer.remote import inspect_remote

        reference = parse_reference(text)
        transport = _transport(args, reference)
        try:
            found = inspect_remote(transport, reference, platform)
        finally:
            transport.close()
    else:
        found = inspect_local(ContentStore(), text, platform)
    if args.raw:
        sys.stdout.buffer.write(found.config_body if args.config else found.body)
        sys.stdout.flush()
        return 0
    value = found.config if args.config else found.document()
    print(template.render(value) if template else json.dumps(value, indent=2))
    return 0


def _repository(text: str, command: str) -> Reference:
    """A repository without tag or digest, as ``pier tags`` and ``pull --all-tags`` take it."""
    reference = parse_reference(text)
    if "@" in text or ":" in text.rsplit("/", 1)[-1]:
        raise InvalidReference(f"{command} takes a repository without tag or digest: {reference.name}")
    return reference


def cmd_tags(args: argparse.Namespace) -> int:
    from .transfer.remote import iter_tags

    reference = _repository(args.repository, "pier tags")
    transport = _transport(args, reference)
    try:
        for tag in iter_tags(transport, reference, args.page_size):
            print(tag)
    finally:
        transport.close()
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from .transfer.remote import delete_manifest

    reference = parse_reference(args.reference)
    transport = _transport(args, reference)
    try:
        digest = delete_manifest(transport, reference)
    finally:
        transport.close()
    print(digest if args.quiet else f"Deleted {reference.familiar()}\nDigest: {digest}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from .transfer.saved import save_images, save_to_stream

    store = ContentStore()
    images = []
    for text in args.references:
        reference, digest = _local(store, text)
        digest, note = shareable(store, digest, _platform(args))
        if note:
            print(f"note: {note}", file=sys.stderr)
        images.append((reference, digest))
    if args.output is None:  # `pier save IMG > x.tar`, as docker save writes to its standard output
        if sys.stdout.isatty():
            raise ImageError("refusing to write a tar to a terminal: give -o FILE or redirect the output")
        format = args.format or "docker-archive"
        with store.lock():
            save_to_stream(store, images, sys.stdout.buffer, format, _platform(args))
        return 0
    output = Path(args.output)
    format = output_format(output, args.format)
    with store.lock():  # shared: no rmi deletes what is being written
        save_images(store, images, output, format, _platform(args))
    for reference, digest in images:
        print(f"Saved {reference.familiar()} ({digest}) to {args.output} ({format})")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .transfer.saved import load_from_stream, load_images

    path = args.input or args.path
    if not path and sys.stdin.isatty():
        raise ImageError("give the directory or tar file to load (pier load -i FILE.tar), or pipe a tar in")
    store = ContentStore()
    with store.lock():
        if path:
            loaded = load_images(store, Path(path), args.name)
        else:  # `pier load < x.tar`
            loaded = load_from_stream(store, sys.stdin.buffer, args.name)
    for item in loaded:
        name = item.reference.familiar() if item.reference else "(untagged: give --name to tag it)"
        print(f"Loaded {name} {item.digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from .transfer.transport import Transport

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
    from .unpack.rootfs import unpack_image

    store = ContentStore()
    _, digest = _local(store, args.reference)
    image = load_image(store, digest, _platform(args), need_layers=False)  # blobs, or unpacked layers
    target = Path(args.directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ImageError(f"{target} is not empty: unpack into a new directory")
    with store.lock():  # shared: rmi cannot delete the layers while they are read
        unpack_image(store, image, target)
    if not args.quiet:
        print(f"Unpacked {plural(len(image.layers), 'layer')} into {target}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .run.oci_runtime import CommandNotRunnable, RunOptions, run
    from .unpack.rootfs import layers_available

    reference = parse_reference(args.reference)
    platform = _platform(args)
    store = ContentStore()
    digest = local_digest(store, reference)
    try:
        if digest is None:
            raise ImageError(f"{reference.familiar()} is not in the local store")
        image = load_image(store, digest, platform, need_layers=False)
        if not layers_available(store, image):
            raise ImageError(f"{reference.familiar()} lacks layers in the local store")
    except ImageError:  # missing, or missing this platform's image: pull it, as docker does
        from .transfer.pull import pull  # httpx: imported only when there is something to pull

        pulled = pull(
            reference,
            store,
            platform,
            insecure=_insecure(args, reference.domain),
            credentials=lookup(reference.domain),
            ca_cert=_ca_cert(args),
        )
        image = load_image(store, pulled.index_digest or pulled.digest, platform, need_layers=False)
    host_volumes, artifact_mounts = _artifact_mounts(args, store)
    options = RunOptions(
        command=args.command,
        env=args.env,
        workdir=args.workdir,
        user=args.user,
        volumes=host_volumes,
        artifact_mounts=artifact_mounts,
        network=args.network,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        interactive=args.interactive,
        tty=args.tty,
        name=args.name,
        remove=args.rm,
        runtime=args.runtime,
        read_only=args.read_only,
    )
    try:
        return run(store, image, reference.familiar(), options, notice=_copy_notice(store))
    except CommandNotRunnable as exc:  # docker's message and exit code: 127 missing, 126 not executable
        print(f"pier run: {exc}", file=sys.stderr)
        return exc.exit_code


def _artifact_mounts(
    args: argparse.Namespace, store: ContentStore
) -> tuple[list[str], list[tuple[list[Path], str, list[str]]]]:
    """Host volumes as given, and each artifact ``--mount``/``-v REF:/path`` as its layer directories."""
    if not args.mount and all(v.startswith("/") for v in args.volume):
        return args.volume, []  # no artifact: nothing to import
    from .artifact.mounts import ImageMount, prepare

    host, wanted = [], [ImageMount.parse_mount(text) for text in args.mount]
    for text in args.volume:
        mount = ImageMount.parse_volume(text)
        if mount is None:
            host.append(text)
        else:
            wanted.append(mount)
    prepared = []
    for mount in wanted:
        layers, keys = prepare(store, mount.source, _transport_for(args))
        prepared.append((layers, mount.target, keys))
    return host, prepared


def _copy_notice(store: ContentStore) -> Callable[[str], None]:
    """Say once per store that containers get copies, and why (``pier info`` says it on demand)."""

    def notice(reason: str) -> None:
        marker = store.root / "copy-mode-noticed"
        if not marker.exists():
            marker.touch()
            print(
                f"pier: {reason}; containers get a copy of their image's layers instead "
                "(slower to start, more disk): see pier info",
                file=sys.stderr,
            )

    return notice


def _fetch_for_build(args: argparse.Namespace) -> Callable[[str, bool], Image]:
    """FROM and COPY --from images: the local store's, else (or with --pull) the registry's."""

    def fetch(text: str, always_pull: bool) -> Image:
        from .unpack.rootfs import layers_available

        reference = parse_reference(text)
        store = ContentStore()
        platform = _platform(args)
        digest = None if always_pull else local_digest(store, reference)
        if digest is not None:
            try:
                image = load_image(store, digest, platform, need_layers=False)
                if layers_available(store, image):
                    return image
            except ImageError:
                pass
        from .transfer.pull import pull

        pulled = pull(
            reference,
            store,
            platform,
            insecure=_insecure(args, reference.domain),
            credentials=lookup(reference.domain),
            ca_cert=_ca_cert(args),
        )
        return load_image(store, pulled.index_digest or pulled.digest, platform, need_layers=False)

    return fetch


def cmd_build(args: argparse.Namespace) -> int:
    from .build.command import build

    def push(store: ContentStore, digest: str, reference: Reference) -> str:
        from .transfer.push import push_local

        transport = _transport(args, reference)
        try:
            return push_local(store, digest, reference, _platform(args), transport)[0]
        finally:
            transport.close()

    transports: list[Transport] = []

    def open_cache(store: ContentStore, reference: Reference) -> RemoteSteps:
        from .build.cache_transfer import RemoteCache

        transports.append(_transport(args, reference))
        return RemoteCache(store, reference, transports[-1])

    def export(store: ContentStore, reference: Reference, steps: dict[str, CachedStep]) -> str:
        from .build.cache_transfer import export_cache

        transport = _transport(args, reference)
        try:
            return export_cache(store, reference, transport, steps)
        finally:
            transport.close()

    try:
        return build(args, _fetch_for_build(args), push, open_cache, export)
    finally:
        for transport in transports:
            transport.close()


def cmd_history(args: argparse.Namespace) -> int:
    from .build.command import history

    store = ContentStore()
    _, digest = _local(store, args.reference)
    image = load_image(store, digest, _platform(args), need_layers=False)
    return history(image, args.no_trunc, args.json)


def _transport_for(args: argparse.Namespace) -> Callable[[Reference], Transport]:
    return lambda reference: _transport(args, reference)


def cmd_model(args: argparse.Namespace) -> int:
    from .artifact import command

    handlers: dict[str, Callable[[], int]] = {
        "push": lambda: command.model_push(args, _transport_for(args)),
        "pull": lambda: command.model_pull(args, _transport_for(args)),
        "ls": lambda: command.model_ls(args),
        "inspect": lambda: command.model_inspect(args, _transport_for(args)),
    }
    args.command_kind = "model"
    with _files_errors():
        return handlers[args.model_command]()


def cmd_artifact(args: argparse.Namespace) -> int:
    from .artifact import command

    with _files_errors():
        if args.artifact_command == "push":
            return command.artifact_push(args, _transport_for(args))
        return command.artifact_pull(args, _transport_for(args))


@contextlib.contextmanager
def _files_errors() -> Iterator[None]:
    """A folder or file the user named that cannot be read or written: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise PierError(f"{where}{exc.strerror or exc}") from None


def cmd_ps(args: argparse.Namespace) -> int:
    from .run.containers import Containers, is_running

    template = _row_template(args.format, CONTAINER_FIELDS)
    containers = Containers(ContentStore().root)
    table = [("CONTAINER", "IMAGE", "COMMAND", "CREATED", "STATUS")]
    for _, state in containers.all():
        running = is_running(state)
        if not running and not args.all:
            continue
        status = "running" if running else f"exited ({state.exit_code})"
        created = datetime.datetime.fromtimestamp(state.created).strftime("%Y-%m-%d %H:%M:%S")
        if args.quiet:
            print(state.id)
        elif template is not None:
            fields = {
                "ID": state.id,
                "Image": state.image,
                "Digest": state.digest,
                "Command": " ".join(state.command),
                "Created": created,
                "Status": status,
                "ExitCode": state.exit_code,
            }
            print(template.render(fields))
        else:
            table.append((state.id, state.image, " ".join(state.command)[:40], created, status))
    if not args.quiet and template is None:
        _print_table(table)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from .run.containers import Containers

    containers = Containers(ContentStore().root)
    for name in args.containers:
        containers.remove(name, force=args.force)
        print(name)
    return 0


class _VersionAction(argparse.Action):
    """``--version``, read from the installed package only when asked (it costs a twentieth of a second)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"pier {_version()}")
        parser.exit()


def _version() -> str:
    """The installed package's version, so ``pier --version`` cannot drift from pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pier")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1, named as such when it is not."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text[:40]!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: "--roo" must be an error, not "--root".
    parser = argparse.ArgumentParser(
        prog="pier", description="pier: an OCI registry and its client", allow_abbrev=False
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show pier's version and exit")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    commands.add_parser("serve", help="run the registry (see `pier serve --help`)", add_help=False)
    commands.add_parser("gc", help="free unreferenced registry blobs (see `pier gc --help`)", add_help=False)
    commands.add_parser("fsck", help="verify the registry's storage (see `pier fsck --help`)", add_help=False)
    commands.add_parser(
        "retention", help="apply the registry's retention rules (see `pier retention --help`)", add_help=False
    )
    commands.add_parser(
        "audit", help="read the registry's audit log (see `pier audit --help`)", add_help=False
    )

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, allow_abbrev=False)
        # The subcommand's own parser, to report a mistyped flag with its usage (see main).
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    def registry_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--insecure", action="store_true", help="plain HTTP (default for loopback without a CA)"
        )
        sub.add_argument("--ca-cert", help="a CA certificate to trust besides the system's (or PIER_CA_CERT)")

    def format_option(sub: argparse.ArgumentParser, fields: str) -> None:
        sub.add_argument(
            "--format",
            metavar="TEMPLATE",
            help=f"Go-template-like, e.g. '{{{{.{fields.split(',')[0]}}}}}'; fields: {fields} (see README)",
        )

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
    sub.add_argument(
        "-a", "--all-tags", action="store_true", help="pull every tag of the repository (give no tag)"
    )
    sub.add_argument(
        "--no-unpack",
        action="store_true",
        help="only store the blobs (for push, save, copy); pier run unpacks what it needs later",
    )

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
    sub.add_argument("-q", "--quiet", action="store_true", help="print only digests, each once")
    format_option(sub, ", ".join(IMAGE_FIELDS))

    sub = command("rmi", cmd_rmi, "remove local images and the blobs nothing else uses")
    sub.add_argument("references", nargs="+", help="REPO:TAG, REPO@DIGEST, or a digest as images -q prints")
    sub.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="also when a container uses it or several repositories tag it",
    )

    sub = command(
        "prune", cmd_prune, "remove the blobs and unpacked layers no image, container or build cache uses"
    )
    sub.add_argument(
        "--build-cache", action="store_true", help="also empty pier build's cache and free its layers"
    )
    command("info", cmd_info, "show the local store, its layers, and how containers get their rootfs")

    sub = command("inspect", cmd_inspect, "print an image's manifest and config as JSON (local, or --remote)")
    sub.add_argument("reference", help="local image, or with --remote (or a docker:// prefix) a registry's")
    sub.add_argument("--platform", help="the platform's image of an index (default: this machine)")
    sub.add_argument(
        "--remote", action="store_true", help="read the image from its registry, without pulling it"
    )
    sub.add_argument(
        "--raw", action="store_true", help="the manifest (or index) bytes exactly as stored or served"
    )
    sub.add_argument("--config", action="store_true", help="the image config (with --raw: its exact bytes)")
    format_option(sub, "Name, Digest, Index, ManifestDigest, Manifest, Config")
    registry_options(sub)

    sub = command("tags", cmd_tags, "list the tags of a repository in its registry (all pages)")
    sub.add_argument("repository", help="e.g. registry.example.org/team/app (no tag)")
    sub.add_argument(
        "--page-size",
        type=_positive,
        metavar="N",
        help="ask for N tags per request (default: the registry's pages)",
    )
    registry_options(sub)

    sub = command("delete", cmd_delete, "delete an image's manifest from its registry (a tag: its digest)")
    sub.add_argument(
        "reference", help="REPO:TAG (resolved to its digest first, as skopeo does) or REPO@DIGEST"
    )
    sub.add_argument("-q", "--quiet", action="store_true", help="print only the digest deleted")
    registry_options(sub)

    sub = command("save", cmd_save, "write local images to an OCI layout directory or a docker save tar")
    sub.add_argument("references", nargs="+")
    sub.add_argument(
        "-o", "--output", help="a layout directory (created, or added to), or FILE.tar (default: stdout)"
    )
    sub.add_argument(
        "--format",
        choices=FORMATS,
        help="default: docker-archive (docker save's tar, with an OCI layout inside) for *.tar, else oci-dir",
    )
    sub.add_argument("--platform", help="the image saved when only part of an index is local")

    sub = command("load", cmd_load, "import images from an OCI layout (directory or tar) or docker save tar")
    sub.add_argument("path", nargs="?", help="a layout directory or a tar file (default: a tar on stdin)")
    sub.add_argument("-i", "--input", help="the same, as docker load takes it")
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
    sub.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        help="/host:/container[:ro], or an artifact: REF:/path[:ro]",
    )
    sub.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="type=image,source=REF,target=/path",
        help="mount a model or other artifact read-only (pulled if missing)",
    )
    sub.add_argument("--network", default="none", choices=["none", "host"], help="default: none")
    sub.add_argument("--memory", help="memory limit, e.g. 512m")
    sub.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    sub.add_argument("--pids-limit", type=int, help="maximum number of processes")
    sub.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    sub.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    sub.add_argument("--name", help="container name (default: generated)")
    sub.add_argument("--rm", action="store_true", help="delete the container when it exits")
    sub.add_argument("--read-only", action="store_true", help="mount the container's rootfs read-only")
    sub.add_argument("--runtime", help="OCI runtime on PATH (default: chosen by the cgroup layout)")
    sub.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    sub.add_argument("--insecure", action="store_true", help="plain HTTP when pulling")

    sub = command("build", cmd_build, "build an image from a Dockerfile (RUN steps under runc, cached)")
    from .build.arguments import add_arguments

    add_arguments(sub)

    sub = command("history", cmd_history, "show how an image was built, one line per step")
    sub.add_argument("reference")
    sub.add_argument("--no-trunc", action="store_true", help="show whole commands")
    sub.add_argument("--json", action="store_true", help="one JSON object per step")
    sub.add_argument("--platform", help="the platform's image of an index (default: this machine)")

    from .artifact.arguments import add_artifact_arguments, add_model_arguments

    for group, handler, help, subcommands, add in (
        (
            "model",
            cmd_model,
            "push, pull, list and inspect models as OCI artifacts (CNCF ModelPack)",
            (
                ("push", "pack a directory as a ModelPack model and push it (only new files are sent)"),
                ("pull", "pull a model's files into a directory (or into the local store, for run --mount)"),
                ("ls", "list the models in the local store"),
                ("inspect", "show a model's metadata and files (local, else its registry's)"),
            ),
            add_model_arguments,
        ),
        (
            "artifact",
            cmd_artifact,
            "push and pull any OCI artifact: files, artifactType, annotations, a subject (like oras)",
            (
                ("push", "push files as an artifact"),
                ("pull", "pull an artifact's files into a directory"),
            ),
            add_artifact_arguments,
        ),
    ):
        parent = commands.add_parser(group, help=help, description=help, allow_abbrev=False)
        nested = parent.add_subparsers(dest=f"{group}_command", required=True)
        for name, text in subcommands:
            sub = nested.add_parser(name, help=text, description=text, allow_abbrev=False)
            sub.set_defaults(handler=handler, command_parser=sub)
            add(sub, name, registry_options)

    sub = command("ps", cmd_ps, "list containers")
    sub.add_argument("-a", "--all", action="store_true", help="also those that exited")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only container IDs")
    format_option(sub, ", ".join(CONTAINER_FIELDS))

    sub = command("rm", cmd_rm, "remove containers kept without --rm")
    sub.add_argument("containers", nargs="+")
    sub.add_argument("-f", "--force", action="store_true", help="also a running one")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["serve"], ["gc"], ["fsck"], ["retention"], ["audit"]):
        # The registry is its own program: hand the process over (same PID, signals and exit
        # code), so the client package never imports the server's.
        os.execv(sys.executable, [sys.executable, "-m", "registry", *argv])
    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # argparse reports these with the top level's usage: give the subcommand's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except PierError as exc:
        print(f"pier: {printable(str(exc))}", file=sys.stderr)  # messages may quote a registry
        return 1
    except KeyboardInterrupt:
        print("pier: interrupted; partial downloads are kept and resume on the next pull", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
