#!/usr/bin/env python3
"""pier pull + unpack beside skopeo copy + umoci unpack, from the reference registry.

Builds (once; cached under bench/.cache/) a multi-layer OCI image from Debian: a
``debootstrap --variant=minbase bookworm`` root filesystem plus three layers of files
extracted from Debian packages (Python 3.11, Perl, GCC 12), gzip-compressed. Starts
Debian's ``docker-registry`` (distribution 2.8) on a free loopback port with a fresh data
folder, pushes the image there with skopeo, and then times, round by round and each time
from an empty local state:

- pier:      ``pier pull REF -q --no-unpack`` into a fresh PIER_HOME, then ``pier unpack
             REF DIR`` (one flat tree, as umoci's; ``bench/layer_store.py`` measures the
             plain ``pier pull``, which unpacks into the layer store as it downloads)
- reference: ``skopeo copy docker://REF oci:LAYOUT:TAG``, then ``umoci unpack``

It prints the medians and the pier/reference ratio, then pulls the same image a second
time into the same PIER_HOME and counts, from the registry's access log, the blob bytes
that second pull transferred (expected: 0). Every process it starts is stopped by PID.

    .venv/bin/python bench/pull_unpack.py [--rounds 3] [--profile] [--rebuild] [--json out.json]

See bench/README.md, section "Pull and unpack (issue 4)".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from servers import REPO_ROOT, Server, start_distribution  # bench/servers.py

CACHE_ROOT = REPO_ROOT / "bench" / ".cache"
CACHE = CACHE_ROOT / "pull_unpack"
BUILD_VERSION = "1"  # bump when the image recipe changes: a new cache folder is built
MIB = 1024 * 1024
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
REPO = "bench/big"
TAG = "v1"
MIN_UNCOMPRESSED = 100 * MIB
SETTLE_AFTER_BUILD = 65  # seconds: ext4's "recently deleted" inode window is 60 s (see fresh())

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# The layers above the base: (name, Debian packages extracted into it with dpkg-deb -x).
PACKAGE_LAYERS = (
    ("python3.11", ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11")),
    ("perl", ("perl-modules-5.36", "libperl5.36", "perl")),
    ("gcc-12", ("gcc-12", "cpp-12", "libgcc-12-dev")),
)
# Used for the base layer only if debootstrap cannot reach the mirror.
FALLBACK_BASE_PACKAGES = (
    "base-files",
    "libc6",
    "libc-bin",
    "bash",
    "coreutils",
    "dash",
    "diffutils",
    "findutils",
    "grep",
    "gzip",
    "sed",
    "tar",
    "util-linux",
    "perl-base",
    "apt",
    "dpkg",
    "libstdc++6",
    "libssl3",
    "libsystemd0",
    "libdb5.3",
    "ncurses-base",
)
PIER = REPO_ROOT / ".venv" / "bin" / "pier"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the image ---------------------------------------------------------------------------


@dataclasses.dataclass
class LayerInfo:
    name: str
    digest: str  # of the gzip blob
    size: int  # compressed
    diff_id: str  # sha256 of the uncompressed tar
    tar_size: int  # uncompressed tar bytes
    files: int  # tar entries


@dataclasses.dataclass
class ImageInfo:
    layout: Path
    tag: str
    source: str  # what the layers were built from
    layers: list[LayerInfo]
    manifest_digest: str
    config_size: int

    @property
    def compressed(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed(self) -> int:
        return sum(layer.tar_size for layer in self.layers)

    @property
    def files(self) -> int:
        return sum(layer.files for layer in self.layers)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["layout"] = str(self.layout)
        return data

    @classmethod
    def from_json(cls, data: dict) -> ImageInfo:
        layers = [LayerInfo(**layer) for layer in data.pop("layers")]
        return cls(layout=Path(data.pop("layout")), layers=layers, **data)


class _HashingSink:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: gzip.GzipFile) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.out.write(data)


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(4 * MIB):
            hasher.update(piece)
    return "sha256:" + hasher.hexdigest()


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob_path(layout, digest).write_bytes(data)
    return digest, len(data)


def _skip_filter(root_excludes: tuple[str, ...]) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    """A tarfile filter that keeps the named directories but drops what is inside them."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name.removeprefix("./")
        for excluded in root_excludes:
            if name.startswith(excluded + "/"):
                return None
        return info

    return keep


def pack_layer(layout: Path, name: str, tree: Path, excludes: tuple[str, ...] = ()) -> LayerInfo:
    """Tar ``tree`` (its contents at the layer's root) into a gzip blob of ``layout``."""
    temporary = layout / "blobs" / "sha256" / f".{name}.tmp"
    entries = 0
    with (
        open(temporary, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as compressed,
    ):
        sink = _HashingSink(compressed)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # stubs demand read/seek for "w|" too
            keep = _skip_filter(excludes)
            for child in sorted(tree.iterdir()):
                tar.add(child, arcname=child.name, recursive=True, filter=keep)
            entries = len(tar.members)  # what was written (getmembers() would read)
    digest = _sha256_file(temporary)
    size = temporary.stat().st_size
    os.rename(temporary, _blob_path(layout, digest))
    diff_id = "sha256:" + sink.hasher.hexdigest()
    log(f"  layer {name}: {sink.size / MIB:.1f} MiB tar, {size / MIB:.1f} MiB gzip, {entries} entries")
    return LayerInfo(name, digest, size, diff_id, sink.size, entries)


def random_layer_tree(tree: Path, seed: int, size: int) -> None:
    """Generated content (last resort): half incompressible random, half compressible text."""
    import random

    rng = random.Random(seed)
    words = [f"word{i:04d}" for i in range(2000)]
    remaining, index = size, 0
    while remaining > 0:
        piece = min(remaining, rng.choice((4096, 65536, 1 * MIB, 4 * MIB)))
        folder = tree / "data" / f"d{index % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2:
            content = rng.randbytes(piece)
        else:
            text = " ".join(rng.choice(words) for _ in range(piece // 8 + 1)).encode()
            content = text[:piece]
        (folder / f"f{index:06d}.bin").write_bytes(content)
        remaining -= piece
        index += 1


def run_checked(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, capture_output=True, check=False, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or b"").decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{tail}")
    return result


def debootstrap(target: Path) -> None:
    if shutil.which("debootstrap") is None:
        log("installing debootstrap with apt-get")
        run_checked(
            ["apt-get", "install", "-y", "debootstrap"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    log(f"debootstrap --variant=minbase {SUITE} (a few minutes)")
    run_checked(["debootstrap", "--variant=minbase", SUITE, str(target), MIRROR], timeout=1800)
    # What a container image leaves out: downloaded packages, apt lists, device nodes.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in target.glob(pattern):
            if path.is_file():
                path.unlink()


def extract_debs(packages: tuple[str, ...], downloads: Path, tree: Path) -> None:
    """``apt-get download`` the packages (this machine is Debian 12) and ``dpkg-deb -x`` them."""
    downloads.mkdir(parents=True, exist_ok=True)
    tree.mkdir(parents=True, exist_ok=True)
    run_checked(["apt-get", "download", *packages], cwd=downloads, timeout=900)
    for package in packages:
        found = sorted(downloads.glob(f"{package}_*.deb"))
        if not found:
            raise RuntimeError(f"apt-get download left no .deb for {package}")
        run_checked(["dpkg-deb", "-x", str(found[-1]), str(tree)])


def build_image(cache: Path) -> ImageInfo:
    """Build the OCI layout under ``cache`` (into a temporary folder, renamed when complete)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    building = cache.parent / f".{cache.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    layout = building / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    scratch = Path(tempfile.mkdtemp(prefix="pier-bench-build-"))
    layers: list[LayerInfo] = []
    history: list[dict] = []
    try:
        base = scratch / "base"
        try:
            debootstrap(base)
            source = f"debootstrap --variant=minbase {SUITE} ({MIRROR})"
            base_excludes: tuple[str, ...] = ("dev", "proc", "sys", "run", "tmp")
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            log(f"debootstrap failed, falling back to .deb files: {error}")
            shutil.rmtree(base, ignore_errors=True)
            source = ""
            base_excludes = ()
        try:
            if not source:
                extract_debs(FALLBACK_BASE_PACKAGES, scratch / "debs", base)
                source = "apt-get download + dpkg-deb -x (debootstrap failed)"
            trees = []
            for name, packages in PACKAGE_LAYERS:
                tree = scratch / name
                extract_debs(packages, scratch / "debs", tree)
                trees.append((name, tree, f"dpkg-deb -x {' '.join(packages)}"))
            source += f"; layers 2-{len(PACKAGE_LAYERS) + 1} from .debs (apt-get download)"
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            log(f"apt-get download failed, falling back to generated bytes: {error}")
            if not (base / "usr").is_dir():
                shutil.rmtree(base, ignore_errors=True)
                random_layer_tree(base, 0, 80 * MIB)
                source = "generated bytes (random + text); debootstrap and apt-get download failed"
            else:
                source += "; upper layers generated (random + text), apt-get download failed"
            trees = []
            for number in range(3):
                tree = scratch / f"generated{number}"
                random_layer_tree(tree, number + 1, 40 * MIB)
                trees.append((f"generated{number}", tree, "generated bytes"))
        log("packing layers (gzip -6)")
        layers.append(pack_layer(layout, "base", base, base_excludes))
        history.append({"created": "2024-01-01T00:00:00Z", "created_by": source.split(";")[0]})
        for name, tree, how in trees:
            layers.append(pack_layer(layout, name, tree))
            history.append({"created": "2024-01-01T00:00:00Z", "created_by": how})
        architecture = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        config = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": architecture,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/bash"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": history,
        }
        config_digest, config_size = _write_blob(layout, json.dumps(config, indent=2).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer in layers
            ],
        }
        manifest_digest, manifest_size = _write_blob(layout, json.dumps(manifest, indent=2).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "annotations": {REF_NAME: TAG},
                }
            ],
        }
        (layout / "index.json").write_text(json.dumps(index, indent=2))
        info = ImageInfo(cache / "layout", TAG, source, layers, manifest_digest, config_size)
        (building / "image.json").write_text(json.dumps(info.to_json(), indent=2))
        shutil.rmtree(cache, ignore_errors=True)
        os.rename(building, cache)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)


def cached_image(rebuild: bool) -> tuple[ImageInfo, bool]:
    """(the image, whether it was built just now)."""
    cache = CACHE / f"v{BUILD_VERSION}"
    if not rebuild and (cache / "image.json").is_file():
        info = ImageInfo.from_json(json.loads((cache / "image.json").read_text()))
        if all(_blob_path(info.layout, layer.digest).is_file() for layer in info.layers):
            log(f"using the cached image in {cache}")
            return info, False
    log(f"building the benchmark image into {cache}")
    return build_image(cache), True


# -- processes ---------------------------------------------------------------------------


def log_offset(registry: Server) -> int:
    return registry.log_path.stat().st_size


def requests_since(registry: Server, offset: int) -> list[tuple[str, str, int, int]]:
    """(method, path, status, response bytes) of the registry's access-log lines after ``offset``."""
    time.sleep(0.3)  # the log line is written just after the last byte is sent
    with open(registry.log_path, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    found = []
    for match in re.finditer(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)', text):
        method, path, status, size = match.groups()
        found.append((method, path, int(status), 0 if size == "-" else int(size)))
    return found


@dataclasses.dataclass
class Timed:
    seconds: float
    cpu: float  # user + system seconds of the child process


def timed(argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Timed:
    """Run one command to completion; wall time and its CPU time. ``sync`` first, untimed."""
    os.sync()  # the previous step's dirty pages are not flushed during this one
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(seconds, cpu)


class Skopeo:
    """skopeo isolated from the machine's settings: own policy, auth file, HOME and tmp."""

    def __init__(self, home: Path) -> None:
        self.home = home
        for folder in ("registries.d", "tmp", "run"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (home / "auth.json").write_text(json.dumps({"auths": {}}))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "TMPDIR": str(home / "tmp"),
        }

    def argv(self, *args: str) -> list[str]:
        options = [
            "--policy",
            str(self.home / "policy.json"),
            "--registries.d",
            str(self.home / "registries.d"),
        ]
        options += ["--tmpdir", str(self.home / "tmp")]
        return ["skopeo", *options, "copy", "--quiet", "--authfile", str(self.home / "auth.json"), *args]


def pier_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    env["PIER_HOME"] = str(home)
    env["DOCKER_CONFIG"] = str(home.parent / "docker-config")  # no credentials from this machine
    return env


# -- measurements ------------------------------------------------------------------------


@dataclasses.dataclass
class Round:
    pull: Timed
    unpack: Timed

    @property
    def total(self) -> float:
        return self.pull.seconds + self.unpack.seconds


def tree_stats(root: Path) -> tuple[int, int]:
    """(entries, bytes of regular files) under ``root``, hardlinks counted once."""
    entries, size, seen = 0, 0, set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entries += 1
            st = os.lstat(os.path.join(folder, name))
            if (st.st_mode & 0o170000) == 0o100000 and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return entries, size


def pier_round(work: Path, ref: str, check: bool) -> Round:
    home = work / "pier-home"
    env = pier_env(home)
    pull = timed([str(PIER), "pull", ref, "-q", "--no-unpack"], env)  # a plain pull also unpacks layers
    unpack = timed([str(PIER), "unpack", ref, str(work / "pier-rootfs")], env)
    if check:
        entries, size = tree_stats(work / "pier-rootfs")
        log(f"  pier rootfs: {entries} entries, {size / MIB:.1f} MiB")
    return Round(pull, unpack)


def reference_round(work: Path, skopeo: Skopeo, ref: str, check: bool) -> Round:
    layout = work / "skopeo-layout"
    bundle = work / "umoci-bundle"
    pull = timed(skopeo.argv("--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:{TAG}"), skopeo.env)
    unpack = timed(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)])
    if check:
        entries, size = tree_stats(bundle / "rootfs")
        log(f"  umoci rootfs: {entries} entries, {size / MIB:.1f} MiB")
    return Round(pull, unpack)


@contextlib.contextmanager
def fresh(parent: Path, name: str) -> Iterator[Path]:
    """A new empty folder, left in place until the whole run ends.

    Nothing is deleted between measurements on purpose: on an ext4 without a journal (this
    machine's root filesystem) the inode allocator skips, one by one, inodes freed in the
    last 60 s (``recently_deleted`` in fs/ext4/ialloc.c). Unpacking right after the previous
    round's ~10k-file trees were removed cost several extra seconds of kernel CPU in
    ``openat``/``mkdir``, charged to whichever side happened to run next.
    """
    path = parent / name
    path.mkdir(parents=True)
    yield path


def blob_bytes(requests: list[tuple[str, str, int, int]]) -> tuple[int, int, int]:
    """(blob GETs, their response bytes, all requests)."""
    gets = [r for r in requests if r[0] == "GET" and "/blobs/" in r[1]]
    return len(gets), sum(r[3] for r in gets), len(requests)


def _short(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    filename = filename.replace(str(REPO_ROOT) + "/", "")
    filename = re.sub(r".*/lib/python3\.\d+/", "", filename)
    return f"{filename}:{line}({function})"


def profile_unpack(work: Path, ref: str, top: int) -> dict:
    """pier unpack once under cProfile (after a pull): the top spots by own and cumulative time."""
    with fresh(work, "profile") as place:
        env = pier_env(place / "pier-home")
        timed([str(PIER), "pull", ref, "-q"], env)
        stats_path = place / "unpack.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(stats_path), "-m", "puller", "unpack"]
        run = timed([*argv, ref, str(place / "rootfs"), "-q"], env)
        raw = pstats.Stats(str(stats_path)).stats  # type: ignore[attr-defined]  # typeshed omits Stats.stats
        rows = [
            {"function": _short(key), "calls": calls, "own": own, "cum": cumulative, "key": key}
            for key, (_, calls, own, cumulative, _) in raw.items()
        ]
        total = max(row["cum"] for row in rows)
        by_own = sorted(rows, key=lambda r: r["own"], reverse=True)[:top]
        # Below the chain of entry points (each of which holds nearly the whole run).
        by_cum = sorted((r for r in rows if r["cum"] < 0.95 * total), key=lambda r: r["cum"], reverse=True)[
            :top
        ]
        print(f"\npier unpack under cProfile: {run.seconds:.2f} s wall ({run.cpu:.2f} s CPU)")
        for title, chosen in (
            ("own time (tottime)", by_own),
            ("cumulative time, below the entry points", by_cum),
        ):
            print(f"top {top} by {title}:")
            print(f"  {'own s':>7} {'cum s':>7} {'calls':>9}  function")
            for row in chosen:
                print(f"  {row['own']:7.2f} {row['cum']:7.2f} {row['calls']:9d}  {row['function']}")
        print("who calls the top 3 by own time (own seconds spent on behalf of each caller):")
        for row in by_own[:3]:
            callers = sorted(raw[row["key"]][4].items(), key=lambda item: item[1][2], reverse=True)[:4]
            named = ", ".join(f"{_short(key)} {numbers[2]:.2f}" for key, numbers in callers)
            print(f"  {row['function']}: {named}")
        for row in rows:
            del row["key"]
        return {"wall": run.seconds, "cpu": run.cpu, "by_own": by_own, "by_cum": by_cum}


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_mib(size: int) -> str:
    return f"{size / MIB:,.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3; medians)")
    parser.add_argument("--rebuild", action="store_true", help="build the image again, ignoring the cache")
    parser.add_argument(
        "--keep-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the built image in bench/.cache/ for the next run (default: keep)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder (logs, data)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes (default: /tmp)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait before measuring, e.g. 65 right after deleting many files (default 0;"
        f" {SETTLE_AFTER_BUILD} after building the image)",
    )
    parser.add_argument("--profile", action="store_true", help="also run pier unpack once under cProfile")
    parser.add_argument("--profile-top", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            parser.error(
                f"{tool} is missing: apt-get install docker-registry skopeo umoci (see bench/README.md)"
            )
    if not PIER.exists():
        parser.error(f"{PIER} is missing: pip install -e . in the venv")

    image, built = cached_image(args.rebuild)
    settle = max(args.settle, SETTLE_AFTER_BUILD if built else 0)
    if settle:
        # The build just deleted its ~10k-file scratch trees: see fresh() for why that matters.
        log(f"waiting {settle:.0f} s for recently freed inodes to age (see fresh())")
        os.sync()
        time.sleep(settle)
    work = Path(tempfile.mkdtemp(prefix="pier-bench-pull-", dir=args.tmpdir))
    registry: Server | None = None
    results: dict = {"image": image.to_json()}
    try:
        registry = start_distribution(work, access_log=True)
        host = f"127.0.0.1:{registry.port}"
        ref = f"{host}/{REPO}:{TAG}"
        skopeo = Skopeo(work / "skopeo-home")
        log(f"pushing the image to docker-registry at {host} with skopeo")
        run_checked(
            skopeo.argv("--dest-tls-verify=false", f"oci:{image.layout}:{TAG}", f"docker://{ref}"),
            env=skopeo.env,
        )

        print(
            f"image: {len(image.layers)} layers, {fmt_mib(image.compressed)} compressed (gzip), "
            f"{fmt_mib(image.uncompressed)} uncompressed tar, {image.files:,} tar entries"
        )
        print(f"built from: {image.source}")
        for layer in image.layers:
            print(
                f"  {layer.name:<12} {fmt_mib(layer.size):>12} gzip {fmt_mib(layer.tar_size):>12} tar "
                f"{layer.files:>7,} entries"
            )
        if image.uncompressed < MIN_UNCOMPRESSED:
            log(f"warning: the image is smaller than {fmt_mib(MIN_UNCOMPRESSED)} uncompressed")

        pier_rounds: list[Round] = []
        ref_rounds: list[Round] = []
        for number in range(args.rounds):
            order = ("pier", "reference") if number % 2 == 0 else ("reference", "pier")
            for side in order:
                with fresh(work, f"round{number + 1}-{side}") as place:
                    if side == "pier":
                        result = pier_round(place, ref, check=number == 0)
                        pier_rounds.append(result)
                    else:
                        result = reference_round(place, skopeo, ref, check=number == 0)
                        ref_rounds.append(result)
                log(
                    f"round {number + 1} {side:<9}: pull {result.pull.seconds:6.2f} s, "
                    f"unpack {result.unpack.seconds:6.2f} s, total {result.total:6.2f} s"
                )

        def row(rounds: list[Round]) -> dict[str, float]:
            return {
                "pull": median([r.pull.seconds for r in rounds]),
                "unpack": median([r.unpack.seconds for r in rounds]),
                "total": median([r.total for r in rounds]),
                "pull_cpu": median([r.pull.cpu for r in rounds]),
                "unpack_cpu": median([r.unpack.cpu for r in rounds]),
            }

        pier_row, ref_row = row(pier_rounds), row(ref_rounds)
        print(
            f"\nmedians of {args.rounds} rounds, each from an empty local state"
            " (seconds; CPU = user+sys of the client)"
        )
        print(f"  {'':<18} {'pull':>8} {'unpack':>8} {'total':>8}   {'pull CPU':>8} {'unpack CPU':>10}")
        for label, data in (("pier", pier_row), ("skopeo + umoci", ref_row)):
            print(
                f"  {label:<18} {data['pull']:8.2f} {data['unpack']:8.2f} {data['total']:8.2f}   "
                f"{data['pull_cpu']:8.2f} {data['unpack_cpu']:10.2f}"
            )
        ratios = {key: pier_row[key] / ref_row[key] for key in ("pull", "unpack", "total")}
        print(
            f"  {'pier / reference':<18} {ratios['pull']:7.2f}x {ratios['unpack']:7.2f}x"
            f" {ratios['total']:7.2f}x"
            f"   (target: total <= 0.70x: {'met' if ratios['total'] <= 0.7 else 'NOT met'})"
        )
        totals = ", ".join(
            f"{p.total:.2f}/{r.total:.2f}" for p, r in zip(pier_rounds, ref_rounds, strict=True)
        )
        print(f"  per round, total pier/reference: {totals}")

        # A second pull into the same PIER_HOME: what crosses the wire?
        with fresh(work, "second-pull") as place:
            env = pier_env(place / "pier-home")
            mark = log_offset(registry)
            first = timed([str(PIER), "pull", ref, "-q"], env)
            first_gets, first_bytes, first_requests = blob_bytes(requests_since(registry, mark))
            mark = log_offset(registry)
            second = timed([str(PIER), "pull", ref, "-q"], env)
            second_gets, second_bytes, second_requests = blob_bytes(requests_since(registry, mark))
        expected = image.compressed + image.config_size
        print(
            f"\nfirst pull into a fresh PIER_HOME: {first_gets} blob GETs, {first_bytes:,} blob bytes "
            f"(layers + config = {expected:,}), {first_requests} requests, {first.seconds:.2f} s"
        )
        print(
            f"second pull transferred {second_bytes:,} blob bytes ({second_gets} blob GETs, "
            f"{second_requests} requests in all, {second.seconds:.2f} s)"
        )

        results.update(
            {
                "rounds": args.rounds,
                "pier": pier_row,
                "reference": ref_row,
                "ratios": ratios,
                "pier_rounds": [dataclasses.asdict(r) for r in pier_rounds],
                "reference_rounds": [dataclasses.asdict(r) for r in ref_rounds],
                "first_pull": {
                    "blob_gets": first_gets,
                    "blob_bytes": first_bytes,
                    "requests": first_requests,
                },
                "second_pull": {
                    "blob_gets": second_gets,
                    "blob_bytes": second_bytes,
                    "requests": second_requests,
                    "seconds": second.seconds,
                },
            }
        )
        if args.profile:
            results["profile"] = profile_unpack(work, ref, args.profile_top)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    finally:
        with contextlib.suppress(Exception):
            if registry is not None:
                registry.stop()
        if args.keep_work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if not args.keep_cache:
            shutil.rmtree(CACHE, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
