"""``pier model push/pull/ls/inspect`` and ``pier artifact push/pull``: the commands over this package."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..reference import Reference, parse_reference
from ..store.content_store import ContentStore
from ..store.image import is_index, local_digest
from ..text import human_size, plural, printable
from ..transfer.pull import Progress
from ..transfer.transport import Transport
from . import modelpack
from .file_index import FileIndex
from .packing import Layer, PackError, discard, scan_model
from .paths import UnsafePath, check_path
from .pull import ArtifactError, PulledFiles, Resolved, pull_files, resolve

TransportFor = Callable[[Reference], Transport]


def _summary(verb: str, reference: Reference, pulled: PulledFiles, target: Path) -> str:
    count = plural(len(pulled.files), "file")
    kept = f", {human_size(pulled.present)} already in place" if pulled.present else ""
    return f"{verb} {reference.familiar()} into {target}: {count}, {human_size(pulled.fetched)} fetched{kept}"


def _metadata(args: argparse.Namespace, directory: Path) -> modelpack.ModelMetadata:
    values: dict = {}
    file = directory / modelpack.METADATA_FILE
    if file.is_file():
        try:
            values = json.loads(file.read_text())
        except ValueError as exc:
            raise PackError(f"{file}: not JSON ({exc})") from None
        if not isinstance(values, dict):
            raise PackError(f"{file}: expected a JSON object")
    flags = {
        "name": args.name,
        "version": args.model_version,
        "family": args.family,
        "vendor": args.vendor,
        "title": args.title,
        "description": args.description,
        "revision": args.revision,
        "authors": args.authors,
        "licenses": args.licenses,
        "architecture": args.architecture,
        "format": args.model_format,
        "paramSize": args.param_size,
        "precision": args.precision,
        "quantization": args.quantization,
        "createdAt": args.created,
    }
    try:
        return modelpack.ModelMetadata.from_sources(values, flags)
    except modelpack.ModelConfigError as exc:
        raise PackError(f"model metadata: {exc}") from None


def _progress(quiet: bool) -> AbstractContextManager[Progress | None]:
    from ..progress import transfer_progress

    return transfer_progress(quiet)


def model_push(args: argparse.Namespace, transport_for: TransportFor) -> int:
    from .push import newest_time, push_artifact

    reference = parse_reference(args.reference)
    directory = Path(os.path.abspath(args.directory))  # index keys must not depend on the cwd
    store = ContentStore()
    index = FileIndex(store.root)
    scratch = store.root / "artifacts" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(args, directory)
    layers = scan_model(directory, args.exclude, args.group, index, scratch)
    metadata.descriptor.setdefault("createdAt", newest_time(layers))

    def config(done: list[Layer]) -> tuple[str, bytes]:
        return modelpack.CONFIG_TYPE, metadata.document([layer.digest for layer in done])

    try:
        transport = transport_for(reference)
        try:
            with _progress(args.quiet) as progress:
                pushed = push_artifact(
                    transport,
                    reference,
                    layers,
                    config,
                    modelpack.ARTIFACT_TYPE,
                    index,
                    parallel=args.parallel,
                    progress=progress,
                )
        finally:
            transport.close()
    finally:
        discard(layers)
    if args.quiet:
        print(pushed.digest)
    else:
        print(
            f"Pushed {reference.familiar()}: {plural(len(layers), 'file')}, "
            f"{human_size(pushed.uploaded)} uploaded, "
            f"{human_size(pushed.skipped)} already there, {human_size(pushed.hashed)} hashed"
        )
        print(f"Digest: {pushed.digest}")
    return 0


def _is_model(resolved: Resolved) -> None:
    if not modelpack.is_model(resolved.manifest):
        kind = resolved.manifest.get("artifactType") or (resolved.manifest.get("config") or {}).get(
            "mediaType"
        )
        raise ArtifactError(
            f"{resolved.reference.familiar()} is not a ModelPack model ({kind}): "
            "pier artifact pull reads any artifact"
        )


def model_pull(args: argparse.Namespace, transport_for: TransportFor) -> int:
    reference = parse_reference(args.reference)
    store = ContentStore()
    if args.directory is None:
        return _pull_mountable(args, reference, store, transport_for)
    target = Path(os.path.abspath(args.directory))
    transport = transport_for(reference)
    try:
        with _progress(args.quiet) as progress:
            pulled = pull_files(
                transport,
                reference,
                target,
                store,
                FileIndex(store.root),
                args.include,
                args.parallel,
                progress,
                check=_is_model if args.command_kind == "model" else None,
            )
    finally:
        transport.close()
    print(pulled.resolved.digest if args.quiet else _summary("Pulled", reference, pulled, target))
    if not args.quiet:
        print(f"Digest: {pulled.resolved.digest}")
    return 0


def _pull_mountable(
    args: argparse.Namespace, reference: Reference, store: ContentStore, transport_for: TransportFor
) -> int:
    from .mounts import prepare

    if args.include:
        raise ArtifactError("--include needs a DIR: a model in the local store is kept whole, for mounting")
    with _progress(args.quiet) as progress:
        paths, _ = prepare(store, args.reference, transport_for, progress)
    digest = local_digest(store, reference) or ""
    print(
        digest
        if args.quiet
        else f"Pulled {reference.familiar()} ({plural(len(paths), 'file')}), ready to mount\nDigest: {digest}"
    )
    return 0


def _stored_artifacts(store: ContentStore) -> list[tuple[str, str, str, dict, dict]]:
    """(name, tag, digest, manifest, config) of every tagged artifact in the local store."""
    found = []
    for name, tag, digest in store.refs():
        try:
            manifest = json.loads(store.read(digest))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or is_index(manifest) or "layers" not in manifest:
            continue
        config: dict = {}
        config_digest = (manifest.get("config") or {}).get("digest", "")
        if store.has(config_digest):
            try:
                loaded = json.loads(store.read(config_digest))
                config = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                pass
        found.append((name, tag, digest, manifest, config))
    return found


def model_ls(args: argparse.Namespace) -> int:
    store = ContentStore()
    rows = []
    for name, tag, digest, manifest, config in _stored_artifacts(store):
        if not modelpack.is_model(manifest):
            continue
        descriptor = config["descriptor"] if isinstance(config.get("descriptor"), dict) else {}
        model_config = config["config"] if isinstance(config.get("config"), dict) else {}
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        rows.append(
            (
                name,
                tag,
                digest.split(":")[-1][:12],
                str(descriptor.get("name", "")),
                str(descriptor.get("version", "")),
                str(model_config.get("paramSize", "")),
                str(len(manifest.get("layers", []))),
                human_size(size),
            )
        )
    if args.quiet:
        for row in rows:
            print(f"{row[0]}:{row[1]}")
        return 0
    header = ("REPOSITORY", "TAG", "DIGEST", "NAME", "VERSION", "PARAMS", "FILES", "SIZE")
    widths = [max(len(printable(str(row[i]))) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "   ".join(
                printable(str(cell)).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    return 0


def _files(manifest: dict) -> list[dict]:
    files = []
    for layer in manifest.get("layers", []):
        files.append(
            {
                "path": modelpack.layer_path(layer) or "",
                "mediaType": layer.get("mediaType", ""),
                "size": int(layer.get("size", 0)),
                "digest": layer.get("digest", ""),
            }
        )
    return files


def model_inspect(args: argparse.Namespace, transport_for: TransportFor) -> int:
    reference = parse_reference(args.reference)
    store = ContentStore()
    resolved: Resolved | None = None
    digest = None if args.remote else local_digest(store, reference)
    if digest is not None and store.has(digest):
        manifest = json.loads(store.read(digest))
        if not is_index(manifest) and store.has((manifest.get("config") or {}).get("digest", "")):
            resolved = Resolved(
                reference, digest, store.read(digest), manifest, store.read(manifest["config"]["digest"])
            )
    if resolved is None:
        from ..transfer.pull import Remote

        transport = transport_for(reference)
        try:
            resolved = resolve(Remote(transport, reference))
        finally:
            transport.close()
    manifest, config = resolved.manifest, resolved.config
    files = _files(manifest)
    document = {
        "Name": str(reference),
        "Digest": resolved.digest,
        "ArtifactType": manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType"),
        "Model": modelpack.is_model(manifest),
        "Descriptor": config.get("descriptor"),
        "Config": config.get("config"),
        "Annotations": manifest.get("annotations") or {},
        "Subject": manifest.get("subject"),
        "Files": files,
        "Size": sum(f["size"] for f in files),
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(f"Name:     {printable(document['Name'])}")
    print(f"Digest:   {resolved.digest}")
    print(f"Type:     {printable(str(document['ArtifactType']))}")
    for section in ("Descriptor", "Config"):
        values = document[section]
        if isinstance(values, dict):
            for key, value in values.items():
                shown = (
                    ", ".join(map(str, value))
                    if isinstance(value, list)
                    else json.dumps(value)
                    if isinstance(value, dict)
                    else str(value)
                )
                print(f"{key + ':':<15}{printable(shown)}")
    print(f"Files:    {len(files)} ({human_size(document['Size'])})")
    width = max((len(printable(f["path"])) for f in files), default=4)
    for entry in files:
        kind = entry["mediaType"].removeprefix("application/vnd.cncf.model.")
        print(f"  {printable(entry['path']).ljust(width)}  {human_size(entry['size']):>9}  {printable(kind)}")
    return 0


def artifact_push(args: argparse.Namespace, transport_for: TransportFor) -> int:
    from .push import EMPTY_CONFIG, EMPTY_CONFIG_TYPE, push_artifact

    reference = parse_reference(args.reference)
    store = ContentStore()
    index = FileIndex(store.root)
    layers = []
    for spec in args.files:
        name, _, media_type = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        path = Path(name)
        if path.is_dir():
            raise PackError(
                f"{name} is a directory: pier artifact push takes files (pier model push packs directories)"
            )
        if not path.is_file():
            raise PackError(f"{name}: no such file")
        try:
            title = check_path(
                path.as_posix().removeprefix("./") if not path.is_absolute() else path.name, "a file"
            )
        except UnsafePath as exc:
            raise PackError(f"{exc}: give files by relative paths inside the current directory") from None
        info = path.stat()
        annotations = {modelpack.TITLE: title}
        layer = Layer(
            title,
            path.resolve(),
            media_type or args.media_type,
            info.st_size,
            annotations,
            info=info,
            mtime=info.st_mtime,
        )
        layer.digest = index.lookup(layer.source, info) or ""
        layers.append(layer)
    if not layers and args.subject is None:
        raise PackError("give files to push (or --subject for an empty referrer)")
    manifest_annotations: dict[str, str] = {}
    for item in args.annotation:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PackError(f"--annotation {item!r}: expected KEY=VALUE")
        manifest_annotations[key] = value
    if args.config:
        config_name, _, config_type = (
            args.config.partition(":") if not Path(args.config).exists() else (args.config, "", "")
        )
        config = (config_type or "application/vnd.oci.image.config.v1+json", Path(config_name).read_bytes())
    else:
        config = (EMPTY_CONFIG_TYPE, EMPTY_CONFIG)
    if config[0] == EMPTY_CONFIG_TYPE and not args.artifact_type:
        raise PackError("--artifact-type is required without --config (the image-spec asks for it)")
    transport = transport_for(reference)
    try:
        subject = _subject(transport, reference, args.subject) if args.subject else None
        with _progress(args.quiet) as progress:
            pushed = push_artifact(
                transport,
                reference,
                layers,
                config,
                args.artifact_type,
                index,
                annotations=manifest_annotations,
                subject=subject,
                parallel=args.parallel,
                progress=progress,
            )
    finally:
        transport.close()
    print(
        pushed.digest
        if args.quiet
        else f"Pushed {reference.familiar()}: {plural(len(layers), 'file')}\nDigest: {pushed.digest}"
    )
    return 0


def _subject(transport: Transport, reference: Reference, text: str) -> dict:
    """The descriptor of the manifest ``--subject`` names, in the same repository (a referrer's subject)."""
    from ..transfer.pull import Remote

    subject = parse_reference(
        text if "/" in text or ":" in text or "@" in text else f"{reference.name}:{text}"
    )
    if subject.api_host != reference.api_host or subject.path != reference.path:
        raise ArtifactError(f"--subject {text}: must be in {reference.name}, the repository pushed to")
    body, media_type, digest = Remote(transport, subject).fetch_manifest(subject.identifier)
    return {"mediaType": json.loads(body).get("mediaType") or media_type, "digest": digest, "size": len(body)}


def artifact_pull(args: argparse.Namespace, transport_for: TransportFor) -> int:
    args.command_kind = "artifact"
    return model_pull(args, transport_for)
