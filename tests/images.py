"""Real container images for client tests, built offline as OCI image layouts on disk.

The images are written byte by byte in Python rather than with umoci, so a test controls
(and knows) every digest and runs in milliseconds. Layer 1 is a working root filesystem
made from the host's busybox-static, so the same images can later be unpacked and run;
further layers hold files the test chooses, including deletions as ``.wh.`` whiteouts.
Everything is deterministic (fixed mtimes, owners and gzip headers): the same content
always gives the same digests, which is what makes shared base layers really shared.

A layout follows the OCI image-layout spec: ``oci-layout``, ``index.json`` (one entry per
tag, named by the ``org.opencontainers.image.ref.name`` annotation), ``blobs/sha256/<hex>``.
Several images and tags may live in one layout; building into it again adds to it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "ls",
    "echo",
    "cat",
    "env",
    "id",
    "sleep",
    "true",
    "false",
    "test",
    "mkdir",
    "rm",
    "wc",
    "head",
    "printf",
    "pwd",
    "uname",
    "sha256sum",
)
EPOCH = 1_700_000_000  # every file's mtime; the same instant as CREATED
CREATED = "2023-11-14T22:13:20Z"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
DEFAULT_CMD = ("/bin/sh",)

# Files of one layer: path in the root filesystem -> content, or None to delete the path
# (written as a whiteout, so it only means something on top of a lower layer).
LayerFiles = Mapping[str, bytes | None]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One content-addressed file of a layout, with what a descriptor needs."""

    media_type: str
    digest: str
    size: int
    path: Path

    def read(self) -> bytes:
        return self.path.read_bytes()

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """A single-platform image: its manifest, config and layers (base first)."""

    layout: Path
    tag: str | None  # None for the children of an index: they are reached through it
    os: str
    architecture: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]  # sha256 of each uncompressed layer tar, as the config lists them

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """What a registry must store besides the manifest: config and layers."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image: the index and one child image per platform."""

    layout: Path
    tag: str
    index: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.index.digest

    def image(self, architecture: str, os: str = "linux") -> Image:
        return next(i for i in self.images if (i.os, i.architecture) == (os, architecture))

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob the index reaches (child manifests, configs, layers), each once."""
        found = {b.digest: b for image in self.images for b in (image.manifest, *image.blobs)}
        return tuple(found.values())


# -- content ---------------------------------------------------------------------------
def random_files(
    sizes: Sequence[int], prefix: str = "data/file", seed: int | None = None
) -> dict[str, bytes]:
    """Files of random bytes: incompressible, so a layer is as big as the test asked."""
    rng = random.Random(seed) if seed is not None else None
    return {
        f"{prefix}{i}.bin": rng.randbytes(size) if rng else os.urandom(size) for i, size in enumerate(sizes)
    }


def sample_layers(
    sizes: Sequence[int] = (10, 64 * 1024, 1024 * 1024), seed: int | None = None
) -> list[LayerFiles]:
    """Two layers on top of the base: random files plus one doomed file, then its deletion.

    A fresh random call gives a new image (new digests) except for the shared base layer.
    """
    first: dict[str, bytes | None] = {**random_files(sizes, seed=seed), "data/doomed.txt": b"deleted above\n"}
    second: dict[str, bytes | None] = {"data/doomed.txt": None, "etc/motd": b"built by pier tests\n"}
    return [first, second]


# -- layers ----------------------------------------------------------------------------
def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
    return info


def _parents(path: str) -> list[str]:
    return [str(p) for p in reversed(PurePosixPath(path).parents) if str(p) != "."]


def layer_tar(
    files: LayerFiles, dirs: Sequence[str] = (), symlinks: Mapping[str, str] | None = None
) -> bytes:
    """An uncompressed layer tar: parent directories first, then entries in sorted order.

    ``None`` content becomes the whiteout ``dir/.wh.name``, which hides ``dir/name`` of
    the layers below (OCI image spec, "Representing Changes").
    """
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def add_dir(path: str) -> None:
        for parent in [*_parents(path), path]:
            entries.setdefault(parent, (_entry(parent, tarfile.DIRTYPE, 0o755), None))

    for path in dirs:
        add_dir(path.strip("/"))
    for path, target in (symlinks or {}).items():
        path = path.strip("/")
        for parent in _parents(path):
            add_dir(parent)
        entries[path] = (_entry(path, tarfile.SYMTYPE, 0o777, link=target), None)
    for path, content in files.items():
        path = path.strip("/")
        for parent in _parents(path):
            add_dir(parent)
        if content is None:
            pure = PurePosixPath(path)
            path = str(pure.parent / f".wh.{pure.name}")
            content = b""
        mode = 0o755 if content.startswith(b"\x7fELF") else 0o644
        entries[path] = (_entry(path, tarfile.REGTYPE, mode, len(content)), content)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            info, content = entries[name]
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no name and mtime 0 in the header, so equal input gives equal digests."""
    return gzip.compress(data, compresslevel=6, mtime=0)


@functools.cache
def busybox_layer() -> tuple[bytes, bytes]:
    """(tar, gzip) of a minimal root filesystem whose /bin/sh is the host's busybox-static.

    Cached: it is the same in every image, which is the point of a shared base layer.
    """
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install the Debian package busybox-static")
    files: dict[str, bytes | None] = {
        "bin/busybox": BUSYBOX.read_bytes(),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": b"root:x:0:\n",
    }
    symlinks = {f"bin/{applet}": "busybox" for applet in APPLETS}
    tar = layer_tar(files, dirs=("dev", "proc", "sys", "tmp", "root"), symlinks=symlinks)
    return tar, gzip_bytes(tar)


# -- layouts ---------------------------------------------------------------------------
def blob_path(layout: Path, digest: str) -> Path:
    algorithm, hex_ = digest.split(":", 1)
    return Path(layout) / "blobs" / algorithm / hex_


def write_blob(layout: Path, media_type: str, data: bytes) -> Blob:
    """Store content under its digest (once: equal content is the same file)."""
    digest = sha256(data)
    path = blob_path(layout, digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return Blob(media_type, digest, len(data), path)


def read_index_json(layout: Path) -> dict:
    path = Path(layout) / "index.json"
    if not path.exists():
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    return json.loads(path.read_text())


def tag_layout(layout: Path, tag: str, target: Blob, **extra: object) -> None:
    """Point ``tag`` at a manifest or index in the layout's index.json (replacing it)."""
    layout = Path(layout)
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = read_index_json(layout)
    kept = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"] = [*kept, target.descriptor(annotations={REF_NAME: tag}, **extra)]
    (layout / "index.json").write_text(json.dumps(index, indent=2))


def resolve_tag(layout: Path, tag: str) -> dict:
    """The index.json descriptor named ``tag``: what a client copying ``oci:DIR:TAG`` reads."""
    found = [d for d in read_index_json(layout)["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag]
    if len(found) != 1:
        raise KeyError(f"{layout}: {len(found)} entries are tagged {tag!r}")
    return found[0]


def layout_blobs(layout: Path) -> dict[str, bytes]:
    """Every blob file of a layout by digest, to compare two layouts completely."""
    root = Path(layout) / "blobs"
    return {f"{p.parent.name}:{p.name}": p.read_bytes() for p in root.glob("*/*") if p.is_file()}


def _config(
    os_: str, architecture: str, diff_ids: list[str], cmd: Sequence[str], env: Sequence[str]
) -> bytes:
    history = [{"created": CREATED, "created_by": f"pier tests: layer {i + 1}"} for i in range(len(diff_ids))]
    document = {
        "created": CREATED,
        "architecture": architecture,
        "os": os_,
        "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    return json.dumps(document, indent=2).encode()


def write_image(
    layout: Path,
    layers: Sequence[LayerFiles],
    architecture: str = "amd64",
    os: str = "linux",
    cmd: Sequence[str] = DEFAULT_CMD,
    env: Sequence[str] = DEFAULT_ENV,
) -> Image:
    """Write the blobs and manifest of one image (busybox base + ``layers``), untagged."""
    layout = Path(layout)
    tars = [busybox_layer(), *((tar, gzip_bytes(tar)) for tar in map(layer_tar, layers))]
    blobs = tuple(write_blob(layout, OCI_LAYER_GZIP, compressed) for _, compressed in tars)
    diff_ids = [sha256(tar) for tar, _ in tars]
    config = write_blob(layout, OCI_CONFIG, _config(os, architecture, diff_ids, cmd, env))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in blobs],
    }
    # Indented on purpose: a client that re-serializes instead of copying bytes changes the digest.
    manifest_blob = write_blob(layout, OCI_MANIFEST, json.dumps(manifest, indent=2).encode())
    return Image(layout, None, os, architecture, manifest_blob, config, blobs, tuple(diff_ids))


def build_image(
    layout: Path,
    tag: str,
    layers: Sequence[LayerFiles] | None = None,
    arch: str = "amd64",
    os: str = "linux",
    cmd: Sequence[str] = DEFAULT_CMD,
    env: Sequence[str] = DEFAULT_ENV,
) -> Image:
    """A multi-layer image tagged ``tag`` in the OCI layout ``layout`` (made if missing).

    ``layers`` go on top of the busybox base; by default ``sample_layers()``: fresh random
    files and a whiteout, so each call is a new image sharing only the base layer.
    """
    image = write_image(layout, sample_layers() if layers is None else layers, arch, os, cmd, env)
    tag_layout(layout, tag, image.manifest)
    return dataclasses.replace(image, tag=tag)


def build_index(
    layout: Path,
    tag: str,
    platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
    layers: Sequence[LayerFiles] | None = None,
) -> ImageIndex:
    """A multi-platform image index tagged ``tag``, one child image per (os, architecture).

    The children share the base layer and ``layers`` (default: ``sample_layers()``) and
    differ in their config and in a top layer naming their platform, so every child has
    its own manifest and the index exercises shared and distinct blobs at once.
    The base binary is the host's busybox whatever the architecture says: these images
    test distribution, not execution on foreign hardware.
    """
    shared = sample_layers() if layers is None else list(layers)
    images = tuple(
        write_image(layout, [*shared, {"etc/platform": f"{os_}/{arch}\n".encode()}], arch, os_)
        for os_, arch in platforms
    )
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            image.manifest.descriptor(platform={"architecture": image.architecture, "os": image.os})
            for image in images
        ],
    }
    index = write_blob(layout, OCI_INDEX, json.dumps(document, indent=2).encode())
    tag_layout(layout, tag, index)
    return ImageIndex(Path(layout), tag, index, images)
