"""A directory, or a list of files, as the layers of an artifact: what each is, and where its bytes are.

Each file is one layer whose blob is the file itself (``raw``): nothing is copied or
compressed before it is sent, and its digest comes from the file index when the file
is unchanged since pier last hashed it. A directory named with ``--group`` becomes
one uncompressed tar layer instead (for thousands of small files), written
reproducibly so an unchanged directory gives the same digest again.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PierError
from . import modelpack
from .file_index import FileIndex
from .paths import PARTIAL_SUFFIX, UnsafePath, check_path, check_paths


class PackError(PierError):
    """A directory or file that cannot be packed; the message says which and why."""


@dataclass
class Layer:
    """One layer to push: a file (``source``) or a tar of a group, with its descriptor fields."""

    path: str  # relative, '/'-separated: the filepath annotation
    source: Path
    media_type: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    digest: str = ""  # known from the index, or found by hashing before the upload
    info: os.stat_result | None = None  # of a file source, to record in the index once hashed
    temporary: bool = False  # a tar written for this push, deleted after it
    mtime: float = 0.0  # of the file, or the newest of a group's

    def descriptor(self) -> dict:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": self.annotations,
        }


def matches(path: str, patterns: list[str]) -> bool:
    """A pattern matches the whole relative path, its file name, or a directory it is under."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.strip().rstrip("/")
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(name, pattern):
            return True
        if path.startswith(pattern + "/"):
            return True
    return False


def _walk(root: Path, exclude: list[str]) -> list[tuple[str, Path, os.stat_result]]:
    """Regular files under ``root`` (sorted), skipping excluded ones; a symlink or device is an error."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        prefix = "" if relative_dir == "." else relative_dir.replace(os.sep, "/") + "/"
        kept = []
        for name in sorted(subdirectories):
            path = prefix + name
            if matches(path, exclude) or name.startswith(".pier"):
                continue
            if os.path.islink(os.path.join(directory, name)):
                raise PackError(
                    f"{path} is a symlink: pier packs files, not links (--exclude it, or copy the target)"
                )
            kept.append(name)
        subdirectories[:] = kept
        for name in sorted(files):
            path = prefix + name
            if matches(path, exclude) or (not prefix and name == modelpack.METADATA_FILE):
                continue
            if name.endswith(PARTIAL_SUFFIX):  # a pull in progress, or one to resume: not the model's
                continue
            full = Path(directory) / name
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise PackError(
                    f"{path} is a symlink: pier packs files, not links (--exclude it, or copy the target)"
                )
            if not stat.S_ISREG(info.st_mode):
                raise PackError(f"{path} is not a regular file")
            try:
                check_path(path, "the directory")
            except UnsafePath as exc:
                raise PackError(str(exc)) from None
            found.append((path, full, info))
    return sorted(found)


def _metadata(path: str, info: os.stat_result) -> str:
    return modelpack.file_metadata(
        path.rsplit("/", 1)[-1], stat.S_IMODE(info.st_mode), info.st_size, info.st_mtime
    )


def scan_model(
    root: Path, exclude: list[str], groups: list[str], index: FileIndex, scratch: Path
) -> list[Layer]:
    """The layers of a model directory: one raw layer per file, one tar per ``--group`` directory."""
    if not root.is_dir():
        raise PackError(f"{root} is not a directory")
    group_paths = []
    for group in groups:
        normalized = group.strip().strip("/")
        try:
            group_paths.append(check_path(normalized, "--group"))
        except UnsafePath as exc:
            raise PackError(str(exc)) from None
        if not (root / normalized).is_dir():
            raise PackError(f"--group {group}: no such directory in {root}")
    files = _walk(root, exclude)
    if not files:
        raise PackError(f"{root} has no files to pack")
    layers: list[Layer] = []
    grouped: dict[str, list[tuple[str, Path, os.stat_result]]] = {g: [] for g in group_paths}
    for path, full, info in files:
        owner = next((g for g in group_paths if path.startswith(g + "/")), None)
        if owner is not None:
            grouped[owner].append((path, full, info))
            continue
        role = modelpack.classify(path)
        annotations = {
            modelpack.FILEPATH: path,
            modelpack.FILE_METADATA: _metadata(path, info),
            modelpack.TITLE: path,
        }
        layer = Layer(
            path,
            full,
            modelpack.layer_media_type(role),
            info.st_size,
            annotations,
            info=info,
            mtime=info.st_mtime,
        )
        layer.digest = index.lookup(full, info) or ""
        layers.append(layer)
    try:
        for group, members in grouped.items():
            if members:
                layers.append(_group_layer(root, group, members, scratch))
        check_paths(layer.path for layer in layers)
    except BaseException:
        discard(layers)
        raise
    return sorted(layers, key=lambda layer: layer.path)


def discard(layers: list[Layer]) -> None:
    """Delete the tars written for a push (groups), once it is over or did not happen."""
    for layer in layers:
        if layer.temporary:
            layer.source.unlink(missing_ok=True)


def _group_layer(
    root: Path, group: str, members: list[tuple[str, Path, os.stat_result]], scratch: Path
) -> Layer:
    """One uncompressed tar of a directory's files, reproducible (an unchanged group gives the same digest).

    Written afresh on every push, and hashed: groups are meant for small files.
    """
    roles = {modelpack.classify(path) for path, _, _ in members}
    role = roles.pop() if len(roles) == 1 else "dataset" if "dataset" in roles else "doc"
    newest = max(max(i.st_mtime_ns, i.st_ctime_ns) for _, _, i in members)
    directory_info = (root / group).stat()
    annotations = {
        modelpack.FILEPATH: group,
        modelpack.FILE_METADATA: modelpack.file_metadata(
            group.rsplit("/", 1)[-1], 0o755, sum(i.st_size for _, _, i in members), newest / 1e9, typeflag="5"
        ),
        modelpack.TITLE: group,
    }
    handle, name = tempfile.mkstemp(dir=scratch, prefix="group-", suffix=".tar")
    os.close(handle)
    target = Path(name)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        directories = sorted(
            {"/".join(p.split("/")[:k]) for p, _, _ in members for k in range(1, p.count("/") + 1)}
        )
        for directory in directories:
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, 0o755, directory_info.st_mtime
            archive.addfile(entry)
        for path, full, info in members:
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode, entry.mtime = info.st_size, stat.S_IMODE(info.st_mode), int(info.st_mtime)
            with open(full, "rb") as stream:
                archive.addfile(entry, stream)
    size = target.stat().st_size
    media_type = modelpack.layer_media_type(role, "tar")
    layer = Layer(group, target, media_type, size, annotations, temporary=True, mtime=newest / 1e9)
    return layer
