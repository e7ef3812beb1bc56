"""``pier build`` and ``pier history`` as the command line has them: flags in, lines out."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import PierError
from ..reference import Reference, parse_reference
from ..store.content_store import ContentStore
from ..store.image import Image
from ..store.platforms import Platform
from ..text import human_size, printable
from .builder import Builder, BuildOptions, RemoteSteps
from .cache import CachedStep
from .image_output import Built

SECRET_LIMIT = 500 * 1024  # BuildKit's limit for one secret


def _build_args(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise PierError(f"--build-arg {item!r}: use KEY=VALUE")
        if sep:
            values[key] = value
        elif key in os.environ:
            values[key] = os.environ[key]
    return values


def _secrets(items: list[str]) -> dict[str, bytes]:
    secrets = {}
    for item in items:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        secret_id = fields.get("id", "")
        if not secret_id:
            raise PierError(f"--secret {item!r}: use id=ID,src=FILE or id=ID,env=VAR")
        if "src" in fields or "source" in fields:
            path = Path(fields.get("src") or fields["source"])
            try:
                if path.stat().st_size > SECRET_LIMIT:
                    raise PierError(f"--secret {secret_id}: larger than {SECRET_LIMIT // 1024} KiB")
                secrets[secret_id] = path.read_bytes()
            except OSError as exc:
                raise PierError(f"--secret {secret_id}: cannot read {path}: {exc.strerror}") from None
        else:
            variable = fields.get("env") or secret_id
            if variable not in os.environ:
                raise PierError(f"--secret {secret_id}: the environment has no {variable}")
            secrets[secret_id] = os.environ[variable].encode()
    return secrets


def _epoch() -> int | None:
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit():
        raise PierError(f"SOURCE_DATE_EPOCH={text[:40]!r}: a whole number of seconds since 1970")
    return int(text)


def build(
    args: argparse.Namespace,
    fetch: Callable[[str, bool], Image],
    push: Callable[[ContentStore, str, Reference], str],
    open_cache: Callable[[ContentStore, Reference], RemoteSteps],
    export_cache: Callable[[ContentStore, Reference, dict[str, CachedStep]], str],
) -> int:
    """Build, tag, push; the digest on stdout, everything else on stderr."""
    context = Path(args.context)
    if not context.is_dir():
        raise PierError(f"build context {args.context}: not a directory")
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    tags = [parse_reference(tag) for tag in args.tag]
    if args.push and not tags:
        raise PierError("--push needs a -t naming the registry and repository")
    platform = Platform.host()
    if args.platform:
        wanted = Platform.parse(args.platform)
        if (wanted.os, wanted.architecture) != (platform.os, platform.architecture):
            raise PierError(f"--platform {wanted}: this machine runs {platform}, and pier builds only for it")
        platform = wanted
    if args.format == "docker" and args.compression == "zstd":
        raise PierError("docker schema2 images have no zstd layers: use --format oci or --compression gzip")
    options = BuildOptions(
        context=context,
        dockerfile=dockerfile,
        build_args=_build_args(args.build_arg),
        target=args.target,
        network=args.network,
        secrets=_secrets(args.secret),
        no_cache=args.no_cache,
        docker_format=args.format == "docker",
        compression=args.compression,
        epoch=_epoch(),
        quiet=args.quiet,
        runtime=args.runtime,
        platform=platform,
    )
    store = ContentStore()
    fetched: dict[str, Image] = {}

    def fetch_once(text: str) -> Image:
        if text not in fetched:
            fetched[text] = fetch(text, args.pull)
        return fetched[text]

    options.remote_caches = [open_cache(store, parse_reference(source)) for source in args.cache_from]
    builder = Builder(store, options, fetch_once)
    built: Built = builder.build(tags)
    if not args.quiet:
        names = ", ".join(tag.familiar() for tag in tags)
        print(f"Built {built.digest}" + (f" as {names}" if names else ""), file=sys.stderr)
    if args.iidfile:
        Path(args.iidfile).write_text(built.digest)
    if args.push:
        for tag in tags:
            pushed = push(store, built.digest, tag)
            if not args.quiet:
                print(f"Pushed {tag.familiar()}", file=sys.stderr)
            del pushed
    if args.cache_to:
        destination = parse_reference(args.cache_to)
        export_cache(store, destination, builder.used_steps)
        if not args.quiet:
            print(f"Exported the build cache to {destination.familiar()}", file=sys.stderr)
    print(built.digest)
    return 0


def _age(created: str) -> str:
    try:
        moment = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return "?"
    seconds = (datetime.datetime.now(datetime.UTC) - moment).total_seconds()
    for unit, size in (
        ("years", 31_536_000),
        ("months", 2_592_000),
        ("days", 86_400),
        ("hours", 3600),
        ("minutes", 60),
    ):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit} ago"
    return "less than a minute ago" if seconds < 120 else "2 minutes ago"


def history(image: Image, no_trunc: bool, as_json: bool) -> int:
    """docker history's columns: newest first, each step with the layer it made (or 0B)."""
    entries = list(image.config.get("history") or [])
    layers = list(image.layers)
    rows = []
    index = 0
    for entry in entries:
        size = 0
        layer = ""
        if not entry.get("empty_layer"):
            if index < len(layers):
                size = int(layers[index].get("size", 0))
                layer = layers[index].get("digest", "")
            index += 1
        rows.append({**entry, "size": size, "layer": layer})
    rows.reverse()
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'CREATED':<22} {'CREATED BY':<60} {'SIZE':>8}  COMMENT")
    for row in rows:
        created_by = printable(str(row.get("created_by", "")))
        if not no_trunc and len(created_by) > 60:
            created_by = created_by[:57] + "..."
        shown = human_size(row["size"]) if row["size"] else "0B"
        age, comment = _age(str(row.get("created", ""))), printable(str(row.get("comment", "")))
        print(f"{age:<22} {created_by:<60} {shown:>8}  {comment}")
    return 0
