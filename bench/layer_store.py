#!/usr/bin/env python3
"""pier's layer store beside skopeo + umoci and podman: pull, unpack, share, run.

Uses the Debian image of ``bench/pull_unpack.py`` (built once, cached under
bench/.cache/) and two images cut from it: ``debian`` (its debootstrap base layer) and
``python`` (the base plus the Python layer). Everything is served by Debian's
``docker-registry`` (distribution 2.8) on a free loopback port, and measured in one run:

1. Pull + unpack of the full image, each round from an empty state: ``pier pull`` (which
   unpacks into the layer store as it downloads) against ``skopeo copy`` + ``umoci
   unpack``; the pull phase alone (``pier pull --no-unpack`` against ``skopeo copy``);
   and ``podman pull`` (which also unpacks, into its overlay store).
2. Sharing: ``debian`` then ``python`` into one store; disk used (``du``) after each, for
   pier, podman, and pier's earlier per-image rootfs trees (two ``pier unpack`` trees).
3. A big layer: one file of incompressible bytes (``--big-gib``, default 2 GiB) in a
   gzip layer, pulled and unpacked by pier, beside ``dd`` writing as many bytes with
   ``conv=fsync`` (the disk's write speed) in the same run.
4. ``pier run --rm IMG true`` against ``podman run --rm IMG true`` (warm: image present).

    .venv/bin/python bench/layer_store.py [--rounds 3] [--big-gib 2] [--json out.json]

See bench/README.md, section "Layer store (issue 20)".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pull_unpack as base  # bench/pull_unpack.py: the image and the measuring helpers
from servers import REPO_ROOT, Server, start_distribution  # bench/servers.py

MIB = 1024 * 1024
GIB = 1024 * MIB
BIG_CACHE = REPO_ROOT / "bench" / ".cache" / "layer_store" / "v2"  # v2: stored-block gzip
PIER = base.PIER
OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP = base.OCI_MANIFEST, base.OCI_CONFIG, base.OCI_LAYER_GZIP


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def du(path: Path) -> int:
    """Bytes on disk under ``path``, each hardlinked inode once (``du -s --block-size=1``)."""
    result = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def disk_write(path: Path, size: int) -> float:
    """Seconds for ``dd`` to write ``size`` bytes to ``path`` and fsync them: the disk's speed."""
    os.sync()
    started = time.perf_counter()
    argv = ["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={size // (4 * MIB)}", "conv=fsync"]
    subprocess.run(argv, capture_output=True, check=True)
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


# -- images ----------------------------------------------------------------------------


def write_image(layout: Path, tag: str, layers: list[base.LayerInfo], blob_source: Path) -> None:
    """An image of ``layers`` (blobs linked from ``blob_source``) tagged ``tag`` in ``layout``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for layer in layers:
        target = blobs / layer.digest.removeprefix("sha256:")
        if not target.exists():
            os.link(blob_source / layer.digest.removeprefix("sha256:"), target)
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_digest, config_size = base._write_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest_digest, manifest_size = base._write_blob(layout, json.dumps(manifest).encode())
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [m for m in index["manifests"] if m["annotations"][base.REF_NAME] != tag]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {base.REF_NAME: tag},
        }
    )
    index_path.write_text(json.dumps(index))


class _Random:
    """Incompressible bytes, fast: a counter through BLAKE2 would be slower than os.urandom here."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return os.urandom(size)


def big_layer(gib: float) -> tuple[Path, base.LayerInfo]:
    """A layout holding one gzip layer of ``gib`` GiB of random bytes in one file (cached)."""
    size = int(gib * GIB)
    cache = BIG_CACHE / f"big-{size}"
    info_path = cache / "layer.json"
    if info_path.is_file():
        return cache / "layout", base.LayerInfo(**json.loads(info_path.read_text()))
    log(f"generating a {gib:g} GiB layer of random bytes into {cache} (once)")
    shutil.rmtree(cache, ignore_errors=True)
    layout = cache / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    temporary = layout / "blobs" / "sha256" / ".big.tmp"
    with (
        open(temporary, "wb") as raw,
        # zlib (as docker's Go gzip) keeps incompressible input in stored blocks: the layer is as big
        # as its data, as a real layer of weights is. isal's fastest level would Huffman-code it.
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        sink = base._HashingSink(gz)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # stubs demand read/seek for "w|" too
            entry = tarfile.TarInfo("data/weights.bin")
            entry.size, entry.mode, entry.mtime = size, 0o644, 1_700_000_000
            tar.addfile(entry, _Random(size))
    digest = base._sha256_file(temporary)
    blob_size = temporary.stat().st_size
    os.rename(temporary, base._blob_path(layout, digest))
    layer = base.LayerInfo("big", digest, blob_size, "sha256:" + sink.hasher.hexdigest(), sink.size, 2)
    write_image(layout, "v1", [layer], layout / "blobs" / "sha256")
    info_path.write_text(json.dumps(dataclasses.asdict(layer)))
    return layout, layer


# -- tools -----------------------------------------------------------------------------


class Podman:
    """podman with its own root and runroot, unmounted and removed at the end."""

    def __init__(self, home: Path) -> None:
        self.root, self.runroot = home / "root", home / "run"
        self.env = {**os.environ, "HOME": str(home)}
        (home / "containers").mkdir(parents=True, exist_ok=True)
        registries = home / "registries.conf"
        registries.write_text("unqualified-search-registries = []\n")
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(registries)

    def argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def cleanup(self) -> None:
        subprocess.run(self.argv("rm", "-af"), capture_output=True, env=self.env)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1]
            if point.startswith((str(self.root), str(self.runroot))):
                subprocess.run(["umount", "-l", point], capture_output=True)


def run_options() -> list[str]:
    return [
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "none",
    ]


@contextlib.contextmanager
def place(work: Path, name: str) -> Iterator[Path]:
    with base.fresh(work, name) as folder:
        yield folder


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-gib", type=float, default=2.0, help="size of the big layer (0: skip)")
    parser.add_argument("--run-rounds", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci", "podman", "runc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing: apt-get install docker-registry skopeo umoci podman runc")

    image, _ = base.cached_image(False)
    work = Path(tempfile.mkdtemp(prefix="pier-bench-layers-", dir=args.tmpdir))
    registry: Server | None = None
    podmen: list[Podman] = []
    results: dict = {}
    try:
        registry = start_distribution(work, access_log=False)
        host = f"127.0.0.1:{registry.port}"
        skopeo = base.Skopeo(work / "skopeo-home")
        layout = work / "layout"
        blob_source = image.layout / "blobs" / "sha256"
        write_image(layout, "full", image.layers, blob_source)
        write_image(layout, "debian", image.layers[:1], blob_source)
        write_image(layout, "python", image.layers[:2], blob_source)
        for tag, repo in (("full", "bench/full"), ("debian", "bench/debian"), ("python", "bench/python")):
            base.run_checked(
                skopeo.argv("--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{host}/{repo}:v1"),
                env=skopeo.env,
            )
        full, debian, python = (f"{host}/bench/{name}:v1" for name in ("full", "debian", "python"))
        print(
            f"image: {len(image.layers)} layers, {image.compressed / MIB:.1f} MiB gzip, "
            f"{image.uncompressed / MIB:.1f} MiB tar, {image.files:,} entries; "
            f"debian = layer 1 ({image.layers[0].size / MIB:.1f} MiB gzip), python = layers 1-2"
        )

        # 1. pull + unpack
        rows: dict[str, list[float]] = {
            k: [] for k in ("pier", "pier_no_unpack", "skopeo", "umoci", "podman")
        }
        for number in range(args.rounds):
            with place(work, f"r{number}-pier") as folder:
                rows["pier"].append(
                    base.timed([str(PIER), "pull", "-q", full], base.pier_env(folder / "home")).seconds
                )
            with place(work, f"r{number}-pier-nounpack") as folder:
                env = base.pier_env(folder / "home")
                rows["pier_no_unpack"].append(
                    base.timed([str(PIER), "pull", "-q", "--no-unpack", full], env).seconds
                )
            with place(work, f"r{number}-ref") as folder:
                pulled = base.timed(
                    skopeo.argv("--src-tls-verify=false", f"docker://{full}", f"oci:{folder / 'layout'}:v1"),
                    skopeo.env,
                )
                unpacked = base.timed(
                    ["umoci", "unpack", "--image", f"{folder / 'layout'}:v1", str(folder / "bundle")]
                )
                rows["skopeo"].append(pulled.seconds)
                rows["umoci"].append(unpacked.seconds)
            with place(work, f"r{number}-podman") as folder:
                podman = Podman(folder)
                podmen.append(podman)
                rows["podman"].append(
                    base.timed(podman.argv("pull", "-q", "--tls-verify=false", full), podman.env).seconds
                )
                podman.cleanup()
            log(f"round {number + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()))
        medians = {key: median(values) for key, values in rows.items()}
        reference = medians["skopeo"] + medians["umoci"]
        results["pull_unpack"] = {"medians": medians, "rounds": rows}
        print(f"\n1. pull + unpack of the full image (medians of {args.rounds} rounds, seconds)")
        print(f"  pier pull (unpacks as it downloads)   {medians['pier']:6.2f}")
        print(
            f"  skopeo copy + umoci unpack            {reference:6.2f}"
            f"  ({medians['skopeo']:.2f} + {medians['umoci']:.2f})"
        )
        print(f"  podman pull                           {medians['podman']:6.2f}")
        print(
            f"  pier / (skopeo + umoci)               {medians['pier'] / reference:6.2f}x  (target <= 0.5x)"
        )
        print(f"  pier / podman                         {medians['pier'] / medians['podman']:6.2f}x")
        print(
            f"  pull phase: pier --no-unpack {medians['pier_no_unpack']:.2f} s"
            f" / skopeo copy {medians['skopeo']:.2f} s"
            f" = {medians['pier_no_unpack'] / medians['skopeo']:.2f}x  (target <= 1.0x)"
        )

        # 2. sharing
        with place(work, "share-pier") as folder:
            env = base.pier_env(folder / "home")
            first = base.timed([str(PIER), "pull", "-q", debian], env).seconds
            after_debian = du(folder / "home")
            second = base.timed([str(PIER), "pull", "-q", python], env).seconds
            after_python = du(folder / "home")
            layers_only = du(folder / "home" / "layers")
            base.timed([str(PIER), "unpack", debian, str(folder / "tree-debian")], env)
            base.timed([str(PIER), "unpack", python, str(folder / "tree-python")], env)
            per_image = du(folder / "tree-debian") + du(folder / "tree-python")
            started = time.perf_counter()
            ran = subprocess.run(
                [str(PIER), "run", "--rm", python, "sh", "-c", "test -x /usr/bin/python3.11 && echo 1"],
                env=env,
                capture_output=True,
                text=True,
            )
            run_seconds = time.perf_counter() - started
            if ran.returncode != 0 or ran.stdout != "1\n":
                raise RuntimeError(f"pier run on the python image failed: {ran.stderr[-500:]}")
        with place(work, "share-pier-unpacked-only") as folder:
            env = {**base.pier_env(folder / "home"), "PIER_KEEP_LAYER_BLOBS": "0"}
            base.timed([str(PIER), "pull", "-q", debian], env)
            lean_debian = du(folder / "home")
            base.timed([str(PIER), "pull", "-q", python], env)
            lean_both = du(folder / "home")
        with place(work, "share-podman") as folder:
            podman = Podman(folder)
            podmen.append(podman)
            podman_first = base.timed(
                podman.argv("pull", "-q", "--tls-verify=false", debian), podman.env
            ).seconds
            podman_after_debian = du(podman.root)
            podman_second = base.timed(
                podman.argv("pull", "-q", "--tls-verify=false", python), podman.env
            ).seconds
            podman_after_python = du(podman.root)
            # 4. run, warm, beside podman's
            pier_runs, podman_runs = [], []
            pier_env = base.pier_env(work / "share-pier" / "home")
            for _ in range(args.run_rounds):
                pier_runs.append(base.timed([str(PIER), "run", "--rm", python, "true"], pier_env).seconds)
                podman_runs.append(
                    base.timed(podman.argv("run", "--rm", *run_options(), python, "true"), podman.env).seconds
                )
            podman.cleanup()
        distinct = image.layers[0].tar_size + image.layers[1].tar_size
        results["sharing"] = {
            "pier": {
                "debian_s": first,
                "python_s": second,
                "du_debian": after_debian,
                "du_both": after_python,
                "du_layers": layers_only,
            },
            "pier_per_image_trees": per_image,
            "pier_unpacked_only": {"du_debian": lean_debian, "du_both": lean_both},
            "podman": {
                "debian_s": podman_first,
                "python_s": podman_second,
                "du_debian": podman_after_debian,
                "du_both": podman_after_python,
            },
            "distinct_layer_tar_bytes": distinct,
            "pier_run_python3_s": run_seconds,
        }
        print("\n2. debian, then python on the same base, into one store (du, MiB; pull seconds)")
        print(f"  {'':28} {'debian':>8} {'+python':>8}   pull s (debian, python)")
        print(
            f"  {'pier (whole home)':28} {after_debian / MIB:8.1f} {after_python / MIB:8.1f}"
            f"   {first:.2f}, {second:.2f}"
        )
        print(f"  {'  of which layers/':28} {'':8} {layers_only / MIB:8.1f}")
        print(f"  {'pier, PIER_KEEP_LAYER_BLOBS=0':28} {lean_debian / MIB:8.1f} {lean_both / MIB:8.1f}")
        print(
            f"  {'podman (whole root)':28} {podman_after_debian / MIB:8.1f} {podman_after_python / MIB:8.1f}"
            f"   {podman_first:.2f}, {podman_second:.2f}"
        )
        print(f"  {'per-image trees (before)':28} {'':8} {per_image / MIB:8.1f}")
        print(f"  {'distinct layers (tar bytes)':28} {'':8} {distinct / MIB:8.1f}")

        pier_run, podman_run = median(pier_runs), median(podman_runs)
        results["run"] = {"pier": pier_runs, "podman": podman_runs}
        print(f"\n4. run --rm IMG true, warm (median of {args.run_rounds})")
        print(
            f"  pier {pier_run:.3f} s, podman {podman_run:.3f} s:"
            f" {pier_run / podman_run:.2f}x  (target <= 1.0x)"
        )

        # 3. the big layer
        if args.big_gib > 0:
            big_layout, big = big_layer(args.big_gib)
            base.run_checked(
                skopeo.argv(
                    "--dest-tls-verify=false", f"oci:{big_layout}:v1", f"docker://{host}/bench/big:v1"
                ),
                env=skopeo.env,
            )
            with place(work, "big-dd") as folder:
                dd_seconds = disk_write(folder / "zeros", big.tar_size)
            with place(work, "big-pier") as folder:
                pulled = base.timed(
                    [str(PIER), "pull", "-q", f"{host}/bench/big:v1"], base.pier_env(folder / "home")
                )
                weights = (
                    folder
                    / "home"
                    / "layers"
                    / big.diff_id.replace(":", "-")
                    / "diff"
                    / "data"
                    / "weights.bin"
                )
                if weights.stat().st_size != int(args.big_gib * GIB):
                    raise RuntimeError(
                        f"{weights}: {weights.stat().st_size} bytes, not {int(args.big_gib * GIB)}"
                    )
                flush_started = time.perf_counter()
                os.sync()  # what pier left in the page cache, written out: comparable to dd's fsync
                flushed = time.perf_counter() - flush_started
            with place(work, "big-pier-lean") as folder:
                env = {**base.pier_env(folder / "home"), "PIER_KEEP_LAYER_BLOBS": "0"}
                lean = base.timed([str(PIER), "pull", "-q", f"{host}/bench/big:v1"], env)
                flush_started = time.perf_counter()
                os.sync()
                lean_flushed = time.perf_counter() - flush_started
            with place(work, "big-dd-after") as folder:
                dd_after = disk_write(folder / "zeros", big.tar_size)
            with place(work, "big-ref") as folder:
                copied = base.timed(
                    skopeo.argv(
                        "--src-tls-verify=false",
                        f"docker://{host}/bench/big:v1",
                        f"oci:{folder / 'layout'}:v1",
                    ),
                    skopeo.env,
                )
                umoci = base.timed(
                    ["umoci", "unpack", "--image", f"{folder / 'layout'}:v1", str(folder / "bundle")]
                )
            size = int(args.big_gib * GIB)
            results["big"] = {
                "bytes": size,
                "dd_fsync_s": dd_seconds,
                "dd_fsync_after_s": dd_after,
                "pier_pull_s": pulled.seconds,
                "pier_flush_s": flushed,
                "pier_unpacked_only_s": lean.seconds,
                "pier_unpacked_only_flush_s": lean_flushed,
                "pier_cpu_s": pulled.cpu,
                "skopeo_s": copied.seconds,
                "umoci_s": umoci.seconds,
            }
            print(f"\n3. one {args.big_gib:g} GiB layer of random bytes (gzip, stored blocks)")
            print(
                f"  dd conv=fsync of as many bytes   {dd_seconds:6.2f} s"
                f"  ({size / dd_seconds / MIB:7.0f} MiB/s)"
            )
            print(
                f"  pier pull (with unpack)          {pulled.seconds:6.2f} s"
                f"  ({size / pulled.seconds / MIB:7.0f} MiB/s,"
                f" {pulled.cpu:.1f} CPU s)"
            )
            print(f"  then sync (pier's dirty pages)   {flushed:6.2f} s")
            print(
                f"  pier pull, PIER_KEEP_LAYER_BLOBS=0 {lean.seconds:6.2f} s, then sync {lean_flushed:.2f} s"
            )
            print(
                f"  dd conv=fsync again, after        {dd_after:6.2f} s  ({size / dd_after / MIB:7.0f} MiB/s)"
            )
            print(f"  skopeo copy + umoci unpack       {copied.seconds + umoci.seconds:6.2f} s")
            disk = min(dd_seconds, dd_after)
            print(
                f"  pier speed / disk write speed    {disk / pulled.seconds:6.2f}x kept blobs,"
                f" {disk / lean.seconds:.2f}x unpacked only;"
                f" with the flush {disk / (pulled.seconds + flushed):.2f}x,"
                f" {disk / (lean.seconds + lean_flushed):.2f}x  (target >= 0.8x)"
            )
    finally:
        for podman in podmen:
            podman.cleanup()
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
