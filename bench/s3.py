#!/usr/bin/env python3
"""pier on S3 beside distribution on S3 (issue 6): both on one SeaweedFS, side by side.

Starts SeaweedFS (``weed mini``, tests/seaweed.py) on loopback, then four registries, each
with its own storage root: pier with ``--redirect false`` and ``--redirect true`` (bucket A,
two prefixes) and Debian's ``docker-registry`` (distribution 2.8) with its own S3 driver and
``redirect: disable: true`` / ``false`` (bucket B, two root directories). Measures:

1. a monolithic blob push (POST, then one PUT ?digest= with the body) and its pull with
   ``curl -L`` (redirects followed; the size is checked), default 1 GiB;
2. a multi-layer image (8 random layers, ~256 MiB in all, a config and an OCI manifest):
   layers pushed by chunked PATCH (8 MiB), then the whole image pulled; 4 blobs at a time;
3. the ceiling: boto3 upload/download of the same 1 GiB straight to SeaweedFS, and curl
   GET of a presigned URL (what a redirected pull does);
4. GC: a store of 10,000 blobs / 1,000 manifests written straight through pier's storage
   driver (half the manifests tagged, ~20% of blobs unreferenced), on a folder and on S3;
   ``pier gc --dry-run``, ``pier fsck``, ``pier gc`` and ``pier gc --delete-untagged``
   timed on it, and distribution's ``garbage-collect`` (+ ``-m``) on the same store in
   its own layout.

Medians of --repeats runs, servers in alternating order, table with pier/distribution ratios.
Every server is stopped by PID.

    .venv/bin/python bench/s3.py [--quick] [--size-mib 1024] [--repeats 3] [--json out.json]
    .venv/bin/python bench/s3.py --gc-only [--gc-blobs 10000] [--gc-manifests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from api import (  # bench/api.py (bench/ is sys.path[0])
    MIB,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    BlobFile,
    Http,
    cpu_seconds,
    expect,
    fmt,
    machine_facts,
    mbps,
    push_chunked,
    push_post_put,
    push_small,
)
from servers import REPO_ROOT, Server, free_port  # bench/servers.py

sys.path.append(str(REPO_ROOT))  # for tests.seaweed (and, through it, pier's own registry package)
from tests.seaweed import SeaweedS3

# Layer sizes of the multi-layer image, MiB (256 in all); --quick divides them by 4.
LAYER_MIB = [96, 64, 40, 24, 16, 8, 6, 2]
PARALLEL = 4
CURL_L = ["curl", "-s", "-L", "--noproxy", "*", "-o", "/dev/null"]


def pier_module(name: str) -> Any:
    """A module of pier's own ``registry`` package, imported as ``pier_registry.<name>``."""
    if "pier_registry" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "pier_registry",
            REPO_ROOT / "registry" / "__init__.py",
            submodule_search_locations=[str(REPO_ROOT / "registry")],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pier_registry"] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"pier_registry.{name}")


# -- servers ---------------------------------------------------------------------------


def start_pier_s3(label: str, work: Path, root: str, env: dict[str, str], redirect: bool) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "registry", "serve", "--addr", f"127.0.0.1:{port}", "--root", root]
    command += ["--access-log", "false", "--log-level", "warning", "--s3-addressing-style", "path"]
    command += ["--redirect", "true" if redirect else "false"]
    return Server(label, command, port, work / f"{label}.log", env).start()


def distribution_s3_config(s3: SeaweedS3, bucket: str, rootdir: str, port: int | None, redirect: bool) -> str:
    env = s3.env
    text = (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        "storage:\n  cache:\n    blobdescriptor: inmemory\n"
        "  s3:\n"
        f"    region: {env['AWS_DEFAULT_REGION']}\n"
        f"    regionendpoint: {s3.endpoint}\n"
        f"    bucket: {bucket}\n"
        f"    accesskey: {env['AWS_ACCESS_KEY_ID']}\n"
        f"    secretkey: {env['AWS_SECRET_ACCESS_KEY']}\n"
        "    secure: false\n    v4auth: true\n"
        f"    rootdirectory: {rootdir}\n"
        "  delete:\n    enabled: true\n"
        f"  redirect:\n    disable: {'false' if redirect else 'true'}\n"
    )
    if port is not None:
        text += f"http:\n  addr: 127.0.0.1:{port}\n"
    return text


def start_distribution_s3(
    label: str, work: Path, s3: SeaweedS3, bucket: str, rootdir: str, redirect: bool
) -> Server:
    port = free_port()
    config = work / f"{label}.yml"
    config.write_text(distribution_s3_config(s3, bucket, rootdir, port, redirect))
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    return Server(label, [binary, "serve", str(config)], port, work / f"{label}.log", dist_env()).start()


def dist_env() -> dict[str, str]:
    """Without REGISTRY_* (would override the config) and AWS_* (its settings are in the config;
    aws-sdk-go 1.x panics on AWS_CA_BUNDLE with distribution's own HTTP transport)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}


# -- clients ---------------------------------------------------------------------------


def pull_follow(url: str, size: int) -> float:
    """``curl -L -o /dev/null``: bench/api.py's pull_curl, following redirects."""
    result = subprocess.run(
        [*CURL_L, "-w", "%{http_code} %{size_download} %{time_total} %{num_redirects}", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    code, downloaded, total, _redirects = result.stdout.split()
    if code != "200" or int(downloaded) != size:
        raise RuntimeError(f"pull {url}: HTTP {code}, {downloaded} bytes (expected 200, {size})")
    return float(total)


def redirects_of(url: str) -> str:
    """The status of a blob GET without following, and where it points."""
    result = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip()


class Image:
    """Random layers (BlobFiles with a per-repeat tail) and a per-repeat config/manifest."""

    def __init__(self, folder: Path, sizes_mib: list[int], variants: int) -> None:
        self.layers = [
            BlobFile(folder / f"layer-{i}.bin", s * MIB, variants) for i, s in enumerate(sizes_mib)
        ]
        self.size = sum(layer.size for layer in self.layers)

    def use(self, variant: int) -> list[str]:
        return [layer.use(variant) for layer in self.layers]

    def close(self) -> None:
        for layer in self.layers:
            layer.close()


def push_image(port: int, name: str, image: Image, digests: list[str], variant: int, chunk: int) -> float:
    """Layers by chunked PATCH, PARALLEL at a time; then the config and the manifest by tag."""
    started = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(
            pool.map(
                lambda pair: push_chunked(port, name, pair[0], pair[1], chunk),
                zip(image.layers, digests, strict=True),
            )
        )
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": digests}}
        | {"variant": str(variant)}
    ).encode()
    with Http(port) as http:
        config_desc = push_small(http, name, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **config_desc},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": d, "size": layer.size}
                    for d, layer in zip(digests, image.layers, strict=True)
                ],
            }
        ).encode()
        expect(
            http.request("PUT", f"/v2/{name}/manifests/v1", {"Content-Type": OCI_MANIFEST}, body=manifest),
            201,
            "manifest PUT",
        )
    return time.perf_counter() - started


def pull_image(url: str, port: int, name: str) -> tuple[float, int]:
    """GET the manifest, then the config and every layer with curl -L, PARALLEL at a time."""
    started = time.perf_counter()
    with Http(port) as http:
        reply = expect(
            http.request("GET", f"/v2/{name}/manifests/v1", {"Accept": OCI_MANIFEST}), 200, "manifest GET"
        )
    manifest = json.loads(reply.body)
    blobs = [manifest["config"], *manifest["layers"]]
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda d: pull_follow(f"{url}/v2/{name}/blobs/{d['digest']}", d["size"]), blobs))
    return time.perf_counter() - started, sum(d["size"] for d in blobs) + len(reply.body)


# -- the ceiling: SeaweedFS alone ---------------------------------------------------------


def raw_ceiling(s3: SeaweedS3, bucket: str, blob: BlobFile, repeats: int) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    client = s3.client()
    up, down, presigned = [], [], []
    config = TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads
    for rep in range(repeats):
        key = f"ceiling/{rep}"
        started = time.perf_counter()
        client.upload_file(str(blob.path), bucket, key, Config=config)
        up.append(mbps(blob.size, time.perf_counter() - started))

        class Null:
            def write(self, data: bytes) -> int:
                return len(data)

        started = time.perf_counter()
        client.download_fileobj(bucket, key, Null(), Config=config)
        down.append(mbps(blob.size, time.perf_counter() - started))
        url = client.generate_presigned_url("get_object", {"Bucket": bucket, "Key": key}, ExpiresIn=600)
        presigned.append(mbps(blob.size, pull_follow(url, blob.size)))
        client.delete_object(Bucket=bucket, Key=key)
    med = statistics.median
    return {
        "boto3 upload_file (8 MiB parts, 10 threads)": med(up),
        "boto3 download_fileobj (10 threads)": med(down),
        "curl GET of a presigned URL (1 stream)": med(presigned),
    }


# -- GC: a store written straight through the storage driver -------------------------------


def gc_plan(blobs: int, manifests: int, repos: int, seed: int = 0) -> dict[str, Any]:
    """Blob contents and manifests: ~20% of blobs unreferenced, half the manifests tagged."""
    referenced = int(blobs * 0.8)
    per_manifest = referenced // manifests  # a config and per_manifest - 1 layers each
    contents = [hashlib.sha256(f"pier-gc-{seed}-{i}".encode()).digest() * 32 for i in range(blobs)]
    digests = [f"sha256:{hashlib.sha256(c).hexdigest()}" for c in contents]
    items = []
    for m in range(manifests):
        own = list(range(m * per_manifest, (m + 1) * per_manifest))
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digests[own[0]], "size": len(contents[own[0]])},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": digests[i], "size": len(contents[i])} for i in own[1:]
                ],
            }
        ).encode()
        items.append(
            {
                "repo": f"gc/repo-{m % repos:03d}",
                "body": body,
                "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
                "blobs": own,
                # every repository gets tagged and untagged manifests (distribution's
                # garbage-collect -m fails on a repository without tags)
                "tag": f"t{m}" if (m // repos) % 2 == 0 else None,
            }
        )
    return {"contents": contents, "digests": digests, "manifests": items}


async def write_store(driver: Any, plan: dict[str, Any], flavour: str, concurrency: int = 32) -> int:
    """Write the plan in pier's layout (registry/layout.py) or distribution's; returns file count."""
    layout = pier_module("layout")
    references = pier_module("references")
    dg = references.Digest.parse
    files: list[tuple[str, bytes]] = []
    for content, digest in zip(plan["contents"], plan["digests"], strict=True):
        files.append((layout.blob_data(dg(digest)), content))
    for item in plan["manifests"]:
        name, digest = item["repo"], dg(item["digest"])
        files.append((layout.blob_data(digest), item["body"]))
        if flavour == "pier":
            link = json.dumps({"mediaType": OCI_MANIFEST, "size": len(item["body"])}).encode()
        else:  # distribution: every link holds the digest
            link = item["digest"].encode()
        files.append((layout.revision_link(name, digest), link))
        for index in item["blobs"]:
            blob = plan["digests"][index]
            files.append((layout.layer_link(name, dg(blob)), blob.encode()))
        if item["tag"]:
            files.append((layout.tag_link(name, item["tag"]), item["digest"].encode()))
            if flavour == "distribution":
                index_link = f"{layout.tag_dir(name, item['tag'])}/index/{digest.algorithm}/{digest.hex}/link"
                files.append((index_link, item["digest"].encode()))
    slots = asyncio.Semaphore(concurrency)

    async def put(path: str, data: bytes) -> None:
        async with slots:
            await driver.put_content(path, data)

    await asyncio.gather(*(put(path, data) for path, data in files))
    with contextlib.suppress(AttributeError):
        await driver.close()
    return len(files)


def build_store(location: str, plan: dict[str, Any], flavour: str) -> tuple[int, float]:
    from storage_backends import open_storage

    started = time.perf_counter()
    options: dict[str, Any] = {"addressing_style": "path"} if location.startswith("s3://") else {}
    driver = open_storage(location, fsync=False, **options)
    count = asyncio.run(write_store(driver, plan, flavour))
    return count, time.perf_counter() - started


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, str, int]:
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=3600, check=False
    )
    elapsed = time.perf_counter() - started
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n(rc {result.returncode})\n")
    lines = (result.stdout.strip() or result.stderr.strip() or "?").splitlines()
    summaries = [line for line in lines if line.startswith(("gc:", "fsck:")) or " blobs marked" in line]
    last = (summaries or lines)[-1]
    return elapsed, last[:160], result.returncode


def gc_bench(
    work: Path, s3: SeaweedS3, args: argparse.Namespace, phase: Any, repeats: int
) -> list[dict[str, Any]]:
    plan = gc_plan(args.gc_blobs, args.gc_manifests, args.gc_repos)
    phase(
        f"GC store: {args.gc_blobs} blobs, {args.gc_manifests} manifests in {args.gc_repos} repositories "
        f"(half tagged), {args.gc_blobs - int(args.gc_blobs * 0.8)} blobs unreferenced"
    )
    pier_env = {**os.environ, **s3.env}
    os.environ.update(s3.env)  # for open_storage("s3://...") in this process
    gc_bucket = s3.new_bucket()
    roots = {
        "folder": (str(work / "gc-pier"), work / "gc-dist", None),
        "S3": (f"s3://{gc_bucket}/pier", None, "/dist"),
    }
    docker = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    rows: list[dict[str, Any]] = []
    pier = [sys.executable, "-m", "registry"]
    for backend, (pier_root, dist_folder, dist_rootdir) in roots.items():
        s3_flags = ["--s3-addressing-style", "path"] if backend == "S3" else []
        if backend == "folder":
            assert dist_folder is not None
            dist_location = str(dist_folder / "docker" / "registry" / "v2")
            config_text = (
                "version: 0.1\nlog:\n  level: error\nstorage:\n"
                f"  filesystem:\n    rootdirectory: {dist_folder}\n  delete:\n    enabled: true\n"
            )
        else:
            dist_location = f"s3://{gc_bucket}{dist_rootdir}/docker/registry/v2"
            config_text = distribution_s3_config(s3, gc_bucket, str(dist_rootdir), None, False)
        config = work / f"gc-dist-{backend}.yml"
        config.write_text(config_text)
        log = work / f"gc-{backend}.log"

        def build(flavour: str, location: str, *, _backend: str = backend) -> None:
            count, seconds = build_store(location, plan, flavour)
            phase(f"  {_backend}: wrote {count} files in {flavour}'s layout in {seconds:.1f} s")

        def measure(
            label: str,
            command: list[str],
            system: str,
            times: int,
            *,
            _log: Path = log,
            _backend: str = backend,
        ) -> None:
            runs = []
            for _ in range(times):
                elapsed, last, rc = timed(command, pier_env if system == "pier" else dist_env(), _log)
                runs.append(elapsed)
            phase(f"  {label}: {', '.join(f'{r:.1f}' for r in runs)} s (rc {rc}) {last}")
            rows.append(
                {
                    "backend": _backend,
                    "system": system,
                    "step": label,
                    "seconds": runs,
                    "rc": rc,
                    "output": last,
                }
            )

        build("pier", pier_root)
        root = ["--root", pier_root, *s3_flags]
        measure("pier gc --dry-run", [*pier, "gc", *root, "--grace", "0s", "--dry-run"], "pier", repeats)
        measure("pier fsck", [*pier, "fsck", *root], "pier", repeats)
        measure("pier gc", [*pier, "gc", *root, "--grace", "0s"], "pier", 1)
        measure("pier gc, nothing left to delete", [*pier, "gc", *root, "--grace", "0s"], "pier", 1)
        measure(
            "pier gc --delete-untagged", [*pier, "gc", *root, "--grace", "0s", "--delete-untagged"], "pier", 1
        )

        build("distribution", dist_location)
        dist = [docker, "garbage-collect"]
        measure("distribution garbage-collect --dry-run", [*dist, "--dry-run", str(config)], "dist", repeats)
        measure("distribution garbage-collect", [*dist, str(config)], "dist", 1)
        measure("distribution garbage-collect, nothing left to delete", [*dist, str(config)], "dist", 1)
        measure("distribution garbage-collect -m (delete untagged)", [*dist, "-m", str(config)], "dist", 1)
    return rows


def print_gc(gc_rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    med = statistics.median
    print()
    print(f"GC on {args.gc_blobs} blobs / {args.gc_manifests} manifests (seconds; median where repeated)")
    for row in gc_rows:
        print(f"  {row['backend']:7} {row['step']:55} {med(row['seconds']):7.1f}  rc {row['rc']}")
    pairs = [
        ("pier gc --dry-run", "distribution garbage-collect --dry-run"),
        ("pier gc", "distribution garbage-collect"),
        ("pier gc --delete-untagged", "distribution garbage-collect -m (delete untagged)"),
    ]
    for backend in ("folder", "S3"):
        found = {r["step"]: med(r["seconds"]) for r in gc_rows if r["backend"] == backend}
        for ours, theirs in pairs:
            if ours in found and theirs in found:
                print(
                    f"  {backend:7} {ours} vs distribution: "
                    f"{found[ours]:.1f} s vs {found[theirs]:.1f} s "
                    f"(speed ratio {found[theirs] / found[ours]:.2f}x)"
                )


def gc_only(args: argparse.Namespace) -> int:
    """Just the GC measurements: a SeaweedFS and the two stores, no transfers."""
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pier-s3-gc-bench-", dir=args.tmpdir))

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", flush=True)

    s3 = SeaweedS3(work / "seaweed").start()
    try:
        rows = gc_bench(work, s3, args, phase, args.gc_repeats)
        print_gc(rows, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "gc": rows}, indent=2))
    finally:
        s3.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


# -- the benchmark ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=None, help="monolithic blob size (default 1024)")
    parser.add_argument("--chunk-mib", type=int, default=8, help="PATCH chunk size of image layers (8)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement, median (3)")
    parser.add_argument("--quick", action="store_true", help="128 MiB blob, 64 MiB image, 1 run, small GC")
    parser.add_argument("--gc-blobs", type=int, default=None, help="blobs in the GC store (10000)")
    parser.add_argument("--gc-manifests", type=int, default=None, help="manifests in the GC store (1000)")
    parser.add_argument("--gc-repos", type=int, default=None, help="repositories in the GC store (100)")
    parser.add_argument("--gc-repeats", type=int, default=1, help="runs of each dry run / fsck (1)")
    parser.add_argument("--no-gc", action="store_true", help="skip the GC measurements")
    parser.add_argument("--gc-only", action="store_true", help="only the GC measurements")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folders go")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = parser.parse_args()
    quick = args.quick
    size = (args.size_mib or (128 if quick else 1024)) * MIB
    layer_mib = [max(1, s // 4) for s in LAYER_MIB] if quick else LAYER_MIB
    repeats = args.repeats or (1 if quick else 3)
    args.gc_blobs = args.gc_blobs or (1000 if quick else 10000)
    args.gc_manifests = args.gc_manifests or (100 if quick else 1000)
    args.gc_repos = args.gc_repos or max(1, args.gc_manifests // 10)
    chunk = args.chunk_mib * MIB
    if args.gc_only:
        return gc_only(args)
    for tool in ("docker-registry", "curl"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (see bench/README.md)", file=sys.stderr)
            return 2

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pier-s3-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    s3: SeaweedS3 | None = None
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": {"size_mib": size // MIB, "layers_mib": layer_mib, "chunk_mib": args.chunk_mib}
        | {"repeats": repeats, "parallel": PARALLEL, "gc_blobs": args.gc_blobs}
        | {"gc_manifests": args.gc_manifests, "gc_repos": args.gc_repos},
    }

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", flush=True)

    try:
        facts = machine_facts(work)
        weed = os.path.join(os.path.dirname(sys.executable), "weed")
        facts["SeaweedFS"] = subprocess.run(
            [weed, "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        facts["boto3"] = importlib.metadata.version("boto3")
        results["machine"] = facts
        print("Machine")
        for key, value in facts.items():
            print(f"  {key:13} {value}")
        print()

        phase(f"writing a {size // MIB} MiB blob and {len(layer_mib)} layers ({sum(layer_mib)} MiB)")
        big = BlobFile(work / "big.bin", size, repeats)
        image = Image(work, layer_mib, repeats)

        phase("starting SeaweedFS (weed mini, GOMEMLIMIT=512MiB)")
        s3 = SeaweedS3(work / "seaweed").start()
        env = {**os.environ, **s3.env}
        pier_bucket, dist_bucket, raw_bucket = s3.new_bucket(), s3.new_bucket(), s3.new_bucket()

        phase(f"ceiling: boto3 and curl straight to SeaweedFS, {size // MIB} MiB, x{repeats}")
        ceiling = raw_ceiling(s3, raw_bucket, big, repeats)
        for name, rate in ceiling.items():
            print(f"    {name}: {rate:,.0f} MB/s")
        results["ceiling_mbps"] = ceiling

        phase("starting pier (redirect off / on) and distribution (redirect off / on)")
        targets: dict[str, Server] = {}
        for redirect in (False, True):
            suffix = "redirect" if redirect else "proxy"
            label = f"pier {suffix}"
            targets[label] = start_pier_s3(
                f"pier-{suffix}", work, f"s3://{pier_bucket}/pier-{suffix}", env, redirect
            )
            servers.append(targets[label])
            label = f"distribution {suffix}"
            targets[label] = start_distribution_s3(
                f"distribution-{suffix}", work, s3, dist_bucket, f"/dist-{suffix}", redirect
            )
            servers.append(targets[label])

        def order(rep: int) -> list[tuple[str, Server]]:
            items = list(targets.items())
            return items if rep % 2 == 0 else items[::-1]

        cpu: dict[str, list[float]] = {}
        weed_pid = s3.process.pid if s3.process else 0

        def run(label: str, kind: str, server: Server, moved: int, function: Any) -> float:
            os.sync()
            before = cpu_seconds(server.pid), cpu_seconds(weed_pid)
            elapsed = function()
            after = cpu_seconds(server.pid), cpu_seconds(weed_pid)
            gib = moved / 1024**3
            cpu.setdefault(f"{label} {kind}", []).append((after[0] - before[0]) / gib)
            cpu.setdefault(f"{label} {kind} (weed)", []).append((after[1] - before[1]) / gib)
            return elapsed

        push: dict[str, list[float]] = {label: [] for label in targets}
        pull: dict[str, list[float]] = {label: [] for label in targets}
        phase(f"monolithic push, {size // MIB} MiB, POST + one PUT ?digest=, x{repeats}")
        for rep in range(repeats):
            digest = big.use(rep)
            for label, server in order(rep):
                elapsed = run(
                    label,
                    "push",
                    server,
                    size,
                    lambda s=server, r=rep, d=digest: push_post_put(s.port, f"b/{r}", big, d),
                )
                push[label].append(mbps(size, elapsed))
            print(f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in push.items()), flush=True)
        for label, server in targets.items():
            answer = redirects_of(f"{server.url}/v2/b/0/blobs/{big.digests[0]}")
            print(f"    {label}: blob GET answers {answer[:110]}")
            results.setdefault("blob_get_answer", {})[label] = answer
        phase(f"monolithic pull, {size // MIB} MiB, curl -L -o /dev/null, x{repeats}")
        for rep in range(repeats):
            for label, server in order(rep):
                url = f"{server.url}/v2/b/{rep}/blobs/{big.digests[rep]}"
                elapsed = run(label, "pull", server, size, lambda u=url: pull_follow(u, size))
                pull[label].append(mbps(size, elapsed))
            print(f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in pull.items()), flush=True)
        big.close()

        ipush: dict[str, list[float]] = {label: [] for label in targets}
        ipull: dict[str, list[float]] = {label: [] for label in targets}
        phase(
            f"image push: {len(layer_mib)} layers ({sum(layer_mib)} MiB) by {args.chunk_mib} MiB PATCHes, "
            f"{PARALLEL} at a time, + config + manifest, x{repeats}"
        )
        for rep in range(repeats):
            digests = image.use(rep)
            for label, server in order(rep):
                elapsed = run(
                    label,
                    "image push",
                    server,
                    image.size,
                    lambda s=server, r=rep, ds=digests: push_image(s.port, f"img/{r}", image, ds, r, chunk),
                )
                ipush[label].append(elapsed)
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in ipush.items()), flush=True
            )
        phase(f"image pull: manifest, then config + layers with curl -L, {PARALLEL} at a time, x{repeats}")
        for rep in range(repeats):
            for label, server in order(rep):

                def one(s: Server = server, r: int = rep) -> float:
                    elapsed, _moved = pull_image(s.url, s.port, f"img/{r}")
                    return elapsed

                ipull[label].append(run(label, "image pull", server, image.size, one))
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in ipull.items()), flush=True
            )
        image.close()
        for server in reversed(servers):
            server.stop()
        servers.clear()

        gc_rows: list[dict[str, Any]] = []
        if not args.no_gc:
            gc_rows = gc_bench(work, s3, args, phase, args.gc_repeats)

        # -- the tables ---------------------------------------------------------------
        med = statistics.median
        print()
        print(f"Results (median of {repeats}; MB = 10^6 bytes; both registries on the same SeaweedFS)")
        header = f"{'Measurement':58}{'pier':>10}{'distribution':>14}{'ratio':>8}"
        print(header)
        print("-" * len(header))
        table = []
        img_mb = image.size / 1e6
        for mode in ("proxy", "redirect"):
            how = "redirect on" if mode == "redirect" else "redirect off"
            rows = [
                (f"Blob push {size // MIB} MiB, POST+PUT, {how} (MB/s)", push, None),
                (f"Blob pull {size // MIB} MiB, curl -L, {how} (MB/s)", pull, None),
                (f"Image push {sum(layer_mib)} MiB, 8 layers, PATCH, {how} (MB/s)", ipush, img_mb),
                (f"Image pull {sum(layer_mib)} MiB, 8 layers, curl -L, {how} (MB/s)", ipull, img_mb),
            ]
            for name, data, per in rows:
                values = [per / v for v in data[f"pier {mode}"]] if per else data[f"pier {mode}"]
                others = (
                    [per / v for v in data[f"distribution {mode}"]] if per else data[f"distribution {mode}"]
                )
                p, d = med(values), med(others)
                ratio = p / d if d else None
                print(f"{name:58}{fmt(p):>10}{fmt(d):>14}{(f'{ratio:.2f}x' if ratio else 'n/a'):>8}")
                table.append({"measurement": name, "pier": p, "distribution": d, "ratio": ratio})
        print()
        print(
            "Ceiling (SeaweedFS alone, same blob): "
            + ", ".join(f"{k} {v:,.0f} MB/s" for k, v in ceiling.items())
        )
        print("Runs (MB/s; image rows in seconds)")
        for title, data in (("push", push), ("pull", pull), ("image push s", ipush), ("image pull s", ipull)):
            for label, values in data.items():
                print(
                    f"  {title:13} {label:22} "
                    + ", ".join(f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in values)
                )
        print("CPU seconds per GiB moved (median): registry process(es), and SeaweedFS during the same runs")
        for key, values in cpu.items():
            if not key.endswith("(weed)"):
                print(f"  {key:40} {med(values):6.2f}   weed {med(cpu[key + ' (weed)']):6.2f}")
        if gc_rows:
            print_gc(gc_rows, args)
        print(f"\nTotal time {time.monotonic() - began:.0f} s")
        results.update(
            {
                "table": table,
                "runs": {"push": push, "pull": pull, "image_push_s": ipush, "image_pull_s": ipull},
                "cpu_seconds_per_gib": cpu,
                "gc": gc_rows,
                "seconds": time.monotonic() - began,
            }
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()
        if s3 is not None:
            with contextlib.suppress(Exception):
                s3.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
