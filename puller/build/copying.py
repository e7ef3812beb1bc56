"""COPY and ADD: what they select, their cache key, and writing the files into a root filesystem.

Sources come from the build context (``.dockerignore`` applied, never outside it), an
earlier stage or an image (``--from``, its layers mounted read-only), a heredoc, or for
``ADD`` a URL (verified against ``--checksum``) or a local tar archive (extracted, with
the unpacker's protections). Destinations are resolved the way the container sees its
filesystem: an image's symlink is followed, but never out of the root.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import os
import posixpath
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from ..errors import PierError
from ..run.oci_runtime import RunError, resolve_user
from ..unpack.layers import UnsafeLayer, apply_layer, resolve_inside
from ..unpack.rootfs import image_layers
from .context import BuildContext, ContextError, IgnorePatterns, is_tar_archive
from .dockerfile import DockerfileError, Instruction, expand, words
from .sandbox import Sandbox
from .stages import Stage, find

if TYPE_CHECKING:
    from .builder import Builder, StageState

URL = re.compile(r"https?://", re.IGNORECASE)
HEREDOC = re.compile(r"<<-?(['\"]?)([A-Za-z0-9_.-]+)\1")
MAX_URL_BYTES = 8 * 1024**3


@dataclass
class CopyStep:
    sources: list[str]
    destination: str  # absolute in the container; a trailing "/" kept: "a directory"
    from_: str | None = None
    chown: str | None = None
    chmod: int | None = None
    add: bool = False
    checksum: str | None = None
    heredocs: dict[str, bytes] = field(default_factory=dict)
    planned: str = ""  # the context digest the cache key was made of: the copy must take the same


@dataclass(frozen=True)
class Copied:
    digest: str  # of what was taken from a context (the build's, a stage's, an image's)
    single_file: str | None  # the name a lone file source got at the destination


@dataclass
class CopyPlan:
    step: CopyStep
    key_parts: list[str]
    describe: str
    link: bool


def plan_copy(
    builder: Builder,
    stages: list[Stage],
    stage: Stage,
    state: StageState,
    instruction: Instruction,
    escape: str,
) -> CopyPlan:
    line = instruction.line
    scope = state.scope()
    add = instruction.keyword == "ADD"
    args = (
        list(instruction.exec_form)
        if instruction.exec_form is not None
        else words(instruction.rest, scope, escape)
    )
    if len(args) < 2:
        raise DockerfileError(line, f"{instruction.keyword} needs at least one source and a destination")
    heredocs = {}
    for heredoc in instruction.heredocs:
        body = (
            expand(heredoc.content, scope, escape, quotes=False, line=line)
            if heredoc.expand
            else heredoc.content
        )
        heredocs[heredoc.name] = body.encode()
    sources = []
    for source in args[:-1]:
        match = HEREDOC.fullmatch(source)
        sources.append(f"<<{match.group(2)}" if match and match.group(2) in heredocs else source)
    workdir = state.config.get("WorkingDir") or "/"
    destination = args[-1]
    absolute = posixpath.join(workdir, destination)
    if destination.endswith("/") or destination in (".", ".."):
        absolute = absolute.rstrip("/") + "/"
    flag_values = {}
    for name in ("from", "chmod", "chown", "checksum"):
        value = instruction.flag(name)
        flag_values[name] = expand(value, scope, escape, line=line) if value is not None else None
    from_, chmod = flag_values["from"], flag_values["chmod"]
    mode = None
    if chmod is not None:
        if not re.fullmatch(r"[0-7]{3,4}", chmod):
            raise DockerfileError(line, f"--chmod={chmod!r}: pier takes an octal mode such as 0755")
        mode = int(chmod, 8)
    checksum = flag_values["checksum"]
    if checksum is not None and not (add and len(sources) == 1 and URL.match(sources[0])):
        raise DockerfileError(line, "--checksum is for ADD of one URL")
    if checksum is not None and not re.fullmatch(r"sha(256|384|512):[0-9a-f]+", checksum):
        raise DockerfileError(line, f"--checksum={checksum!r}: use sha256:<hex>")
    if not add and any(URL.match(s) for s in sources):
        raise DockerfileError(line, "COPY does not fetch URLs: use ADD")
    if any(re.match(r"(git@|[a-z]+://.*\.git(#|$))", s) for s in sources) and add:
        raise DockerfileError(line, "ADD of a git repository is not supported by pier")
    chown = flag_values["chown"]
    step = CopyStep(sources, absolute, from_, chown, mode, add, checksum, heredocs)
    flags = {"from": from_, "chown": chown, "chmod": chmod, "checksum": checksum}
    parts = [json.dumps(sources), absolute, json.dumps(flags, sort_keys=True)]
    parts.append(content_key(builder, stages, stage, step, line))
    link = instruction.bool_flag("link")
    shown = " ".join(f"--{k}={v}" for k, v in flags.items() if v) + (" --link" if link else "")
    return CopyPlan(step, parts, f"{shown} {' '.join(args)}".strip(), link)


def content_key(builder: Builder, stages: list[Stage], stage: Stage, step: CopyStep, line: int) -> str:
    """What the copied content is: its digest, or the key of the stage / digest of the image it comes from."""
    if step.from_ is not None:
        source_stage = find(stages, step.from_, stage.index)
        if source_stage is not None:
            return "content:" + _stage_content(builder, builder.stage_state(source_stage.index), step, line)
        return "image:" + builder.fetch(step.from_).digest
    digest = hashlib.sha256()
    local = []
    for source in step.sources:
        if source.startswith("<<"):
            digest.update(b"heredoc\0" + step.heredocs[source[2:]])
        elif URL.match(source):
            digest.update(b"url\0" + (step.checksum or _download_digest(builder, source, line)).encode())
        else:
            local.append(source)
    if local:
        try:
            step.planned = builder.context.digest(builder.context.resolve(local))
            digest.update(step.planned.encode())
        except ContextError as exc:
            raise DockerfileError(line, str(exc)) from None
    return digest.hexdigest()


def _stage_content(builder: Builder, state: StageState, step: CopyStep, line: int) -> str:
    """The digest of what ``step`` takes from a stage, as BuildKit keys it: by content, so a change
    elsewhere in the stage is no miss. Hashed once per stage result (remembered by its key)."""
    question = json.dumps(["stage-content", state.key, step.sources])
    known = builder.cache.recall(question)
    if known is not None:
        return known
    with Sandbox(builder.session, state.paths, writable=False) as sandbox:
        context = BuildContext(sandbox.rootfs)
        context.ignore = IgnorePatterns([])
        try:
            digest = context.digest(context.resolve(step.sources))
        except ContextError as exc:
            raise DockerfileError(line, str(exc)) from None
    builder.cache.remember(question, digest)
    return digest


def _download(builder: Builder, url: str, line: int) -> tuple[Path, float | None]:
    """An ADD URL's content in a private file, and its Last-Modified time."""
    import httpx

    directory = builder.session.scratch("add-")
    builder._pending.append(directory)
    target = directory / "download"
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            if response.status_code != 200:
                raise DockerfileError(line, f"ADD {url}: the server answered {response.status_code}")
            received = 0
            with target.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    received += len(chunk)
                    if received > MAX_URL_BYTES:
                        raise DockerfileError(line, f"ADD {url}: larger than {MAX_URL_BYTES} bytes")
                    out.write(chunk)
            modified = response.headers.get("last-modified")
    except httpx.HTTPError as exc:
        raise DockerfileError(line, f"ADD {url}: {exc}") from None
    mtime = None
    if modified:
        try:
            mtime = parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            mtime = None
    return target, mtime


def _file_digest(path: Path, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    return f"{algorithm}:{hasher.hexdigest()}"


def _download_digest(builder: Builder, url: str, line: int) -> str:
    path, _ = _download(builder, url, line)
    builder._downloads[url] = path
    return _file_digest(path)


class _Writer:
    """Puts entries under ``root`` as the container sees it: parents resolved once, metadata last."""

    def __init__(self, root: Path, owner: tuple[int, int], chmod: int | None, epoch_now: float) -> None:
        self.root = root
        self.owner = owner
        self.chmod = chmod
        self.now = epoch_now
        self._parents: dict[str, Path] = {}
        self._directories: list[tuple[Path, float]] = []

    def place(self, container_path: str) -> Path:
        """The host path for ``container_path``: its parent resolved inside the root, created if missing."""
        parent, name = posixpath.split(posixpath.normpath("/" + container_path))
        if not name:
            return self.root
        where = self._parents.get(parent)
        if where is None:
            where = resolve_inside(self.root, parent)
            self._make_dirs(where)
            self._parents[parent] = where
        return where / name

    def _make_dirs(self, where: Path) -> None:
        missing = []
        current = where
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            directory.mkdir(mode=0o755)
            os.chown(directory, *self.owner)

    def destination_directory(self, container_path: str) -> Path:
        """The directory a COPY fills, as the container sees it: an image's symlink there is
        followed (inside the root, as BuildKit does); a missing one is made, a file replaced."""
        target = resolve_inside(self.root, container_path)
        if target.exists() and not target.is_dir():
            _remove(target)
        if not target.exists():
            self._make_dirs(target)
        return target

    def directory(self, target: Path, info: os.stat_result | None) -> None:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            _remove(target)
        if not target.exists():
            target.mkdir()
        mode = self.chmod if self.chmod is not None else (stat.S_IMODE(info.st_mode) if info else 0o755)
        os.chmod(target, mode)
        os.chown(target, *self.owner)
        self._directories.append((target, info.st_mtime if info else self.now))

    def file(self, target: Path, source: Path | bytes | BinaryIO, mode: int, mtime: float) -> None:
        if target.is_dir() and not target.is_symlink():
            raise PierError(f"cannot replace the directory {target.relative_to(self.root)} with a file")
        _remove(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            elif isinstance(source, Path):
                with source.open("rb") as stream:
                    shutil.copyfileobj(stream, out, 1 << 20)
            else:
                shutil.copyfileobj(source, out, 1 << 20)
        os.chown(target, *self.owner)
        os.chmod(target, self.chmod if self.chmod is not None else mode)
        os.utime(target, (mtime, mtime))

    def symlink(self, target: Path, link: str, mtime: float) -> None:
        _remove(target)
        os.symlink(link, target)
        os.chown(target, *self.owner, follow_symlinks=False)
        os.utime(target, (mtime, mtime), follow_symlinks=False)

    def finish(self) -> None:
        for directory, mtime in reversed(self._directories):
            os.utime(directory, (mtime, mtime))


def _remove(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _owner(step: CopyStep, rootfs: Path | None, line: int) -> tuple[int, int]:
    if not step.chown:
        return 0, 0
    user, _, group = step.chown.partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        return int(user), int(group or user)
    if rootfs is None:
        raise DockerfileError(
            line, f"--chown={step.chown}: names need the image's /etc/passwd; use numeric ids with --link"
        )
    try:
        found = resolve_user(rootfs, step.chown)
    except RunError as exc:
        raise DockerfileError(line, f"--chown={step.chown}: {exc}") from None
    # docker: a user without a group takes the group with the user's own number
    return int(found["uid"]), int(found["gid"] if group else found["uid"])


def copy_step(
    builder: Builder,
    stages: list[Stage],
    stage: Stage,
    step: CopyStep,
    root: Path,
    line: int,
    *,
    link: bool = False,
    state: StageState | None = None,
) -> Copied:
    """Write what ``step`` copies into ``root``; what it took from a context."""
    owner = _owner(step, None if link else root, line)
    writer = _Writer(root, owner, step.chmod, time.time())
    if step.from_ is not None:
        source_stage = find(stages, step.from_, stage.index)
        if source_stage is not None:
            paths = builder.stage_state(source_stage.index).paths
        else:
            paths = image_layers(builder.store, builder.fetch(step.from_))
        with Sandbox(builder.session, paths, writable=False) as sandbox:
            context = BuildContext(sandbox.rootfs)
            context.ignore = IgnorePatterns([])  # an image's files: no .dockerignore applies
            copied = _copy_from(context, step, writer, line)
            writer.finish()
            return copied
    local = [s for s in step.sources if not s.startswith("<<") and not URL.match(s)]
    copied = Copied("", None)
    if local:
        copied = _copy_from(
            builder.context,
            CopyStep(**{**step.__dict__, "sources": local}),
            writer,
            line,
            many=len(step.sources) > 1,
        )
    for source in step.sources:
        if source.startswith("<<"):
            target = writer.place(_destination_file(step, source[2:], len(step.sources) > 1, root))
            writer.file(target, step.heredocs[source[2:]], 0o644, writer.now)
        elif URL.match(source):
            path = builder._downloads.get(source) or _download(builder, source, line)[0]
            if step.checksum and _file_digest(path, step.checksum.split(":")[0]) != step.checksum:
                raise DockerfileError(
                    line, f"ADD {source}: its content does not match --checksum={step.checksum}"
                )
            name = posixpath.basename(source.split("?")[0].rstrip("/")) or "download"
            target = writer.place(_destination_file(step, name, len(step.sources) > 1, root))
            writer.file(target, path, 0o600, writer.now)
    writer.finish()
    del state
    return copied


def _destination_file(step: CopyStep, name: str, many: bool, root: Path) -> str:
    destination = step.destination
    if destination.endswith("/") or many:
        return posixpath.join(destination, name)
    try:
        if resolve_inside(root, destination).is_dir():
            return posixpath.join(destination, name)
    except UnsafeLayer:
        pass
    return destination


def _copy_from(
    context: BuildContext, step: CopyStep, writer: _Writer, line: int, many: bool = False
) -> Copied:
    try:
        matches = context.resolve(step.sources)
        if not matches:
            raise DockerfileError(
                line, f"no source files were specified: {' '.join(step.sources)} matched nothing"
            )
        digest = context.digest(matches)
        many = many or len(matches) > 1
        for match in matches:
            if step.add and not match.is_dir and is_tar_archive(context.root / match.resolved):
                _extract(context.root / match.resolved, writer, step.destination, line)
                continue
            if match.is_dir:
                writer.destination_directory(step.destination)
            for entry in context.walk(match):
                if match.is_dir:
                    container_path = posixpath.join(step.destination, entry.dest)
                else:
                    container_path = _destination_file(step, entry.dest, many, writer.root)
                target = writer.place(container_path)
                info = entry.stat
                if entry.kind == "dir":
                    writer.directory(target, info)
                elif entry.kind == "symlink":
                    writer.symlink(target, entry.link or "", info.st_mtime)
                elif entry.kind == "file":
                    with context.open(entry) as source:
                        writer.file(target, source, entry.mode, info.st_mtime)
                # sockets, fifos and devices in a context are skipped, as docker skips sockets
    except ContextError as exc:
        raise DockerfileError(line, str(exc)) from None
    except UnsafeLayer as exc:
        raise DockerfileError(line, f"{step.destination}: {exc}") from None
    single = matches[0].name if len(matches) == 1 and not matches[0].is_dir else None
    return Copied(digest, single)


def _extract(archive: Path, writer: _Writer, destination: str, line: int) -> None:
    """ADD of a local tar archive: extracted at the destination, with the unpacker's protections."""
    target = writer.destination_directory(destination)
    media_type = "application/vnd.oci.image.layer.v1.tar"
    with archive.open("rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        stream: BinaryIO = raw
        if magic[:2] == b"\x1f\x8b":
            media_type += "+gzip"
        elif magic[:4] == b"\x28\xb5\x2f\xfd":
            media_type += "+zstd"
        elif magic[:3] == b"BZh":
            stream = cast(BinaryIO, bz2.BZ2File(raw))
        elif magic[:6] == b"\xfd7zXZ\x00":
            stream = cast(BinaryIO, lzma.LZMAFile(raw))  # noqa: SIM115 (closed with raw)
        try:
            apply_layer(target, stream, media_type, f"ADD {archive.name}")
        except (PierError, EOFError, OSError, lzma.LZMAError) as exc:
            raise DockerfileError(line, f"ADD {archive.name}: {exc}") from None
