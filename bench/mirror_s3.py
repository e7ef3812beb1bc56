#!/usr/bin/env python3
"""A mirror whose cache is on S3 (issue 24): pier beside distribution's proxy, both on SeaweedFS.

One upstream (Debian's ``docker-registry`` on a folder) holding a blob in ``--repeats``
variants. In front of it, each caching to its own bucket of one SeaweedFS (``weed mini``):

- pier, ``--proxy up=UPSTREAM --root s3://BUCKET/pier``;
- distribution 2.8 with ``proxy: remoteurl:`` and its S3 driver.

Each variant is pulled cold through both (the order alternates), then warm. A cold pull is
timed to its first byte and to its end: the first byte must not wait for the S3 upload
(pier streams while the multipart upload proceeds), and the end shows what the upload costs.

    .venv/bin/python bench/mirror_s3.py [--size-mib 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from api import MIB, BlobFile, cpu_seconds, fmt, mbps, push_post_put  # bench/ is sys.path[0]
from mirror import settle, start_distribution
from s3 import dist_env, distribution_s3_config
from servers import REPO_ROOT, Server, free_port

sys.path.append(str(REPO_ROOT))
from tests.seaweed import SeaweedS3


def start_pier_s3_mirror(work: Path, root: str, upstream: str, env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "registry", "serve", "--addr", f"127.0.0.1:{port}", "--root", root]
    command += ["--access-log", "false", "--log-level", "warning", "--s3-addressing-style", "path"]
    command += ["--redirect", "false", "--proxy", f"up={upstream}"]
    return Server("pier-mirror-s3", command, port, work / "pier-mirror-s3.log", env).start()


def start_distribution_s3_proxy(work: Path, s3: SeaweedS3, bucket: str, upstream: str) -> Server:
    port = free_port()
    config = work / "distribution-proxy-s3.yml"
    text = distribution_s3_config(s3, bucket, "/dist", port, redirect=False)
    config.write_text(text + f"proxy:\n  remoteurl: {upstream}\n")
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    command = [binary, "serve", str(config)]
    return Server(
        "distribution-proxy-s3", command, port, work / "distribution-proxy-s3.log", dist_env()
    ).start()


def timed_pull(url: str, size: int) -> tuple[float, float]:
    """(seconds to the first byte, seconds in all) of ``curl -o /dev/null``; the size is checked."""
    result = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{size_download} "
         "%{time_starttransfer} %{time_total}", url],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    code, got, first, total = result.stdout.split()
    if code != "200" or int(got) != size:
        raise RuntimeError(f"pull {url}: HTTP {code}, {got} bytes (expected 200, {size})")
    return float(first), float(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="blob size (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="variants, each pulled cold then warm (3)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes")
    args = parser.parse_args()
    size, repeats = args.size_mib * MIB, args.repeats
    work = Path(tempfile.mkdtemp(prefix="pier-mirror-s3-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    s3: SeaweedS3 | None = None
    try:
        blob = BlobFile(work / "big.bin", size, repeats)
        upstream = start_distribution("upstream", work)
        servers.append(upstream)
        s3 = SeaweedS3(work / "seaweed").start()
        pier_bucket, dist_bucket = s3.new_bucket(), s3.new_bucket()
        pier = start_pier_s3_mirror(work, f"s3://{pier_bucket}/pier", upstream.url, {**os.environ, **s3.env})
        dist = start_distribution_s3_proxy(work, s3, dist_bucket, upstream.url)
        servers += [pier, dist]
        for rep in range(repeats):
            push_post_put(upstream.port, "library/big", blob, blob.use(rep))
        blob.close()
        urls = {
            "pier": f"{pier.url}/v2/up/library/big/blobs/",
            "distribution": f"{dist.url}/v2/library/big/blobs/",
        }
        owner = {"pier": pier, "distribution": dist}
        first: dict[str, list[float]] = {}
        cold: dict[str, list[float]] = {}
        warm: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for rep in range(repeats):
            digest = blob.digests[rep]
            order = ["pier", "distribution"][:: 1 if rep % 2 == 0 else -1]
            for label in order:
                before = cpu_seconds(owner[label].pid)
                ttfb, total = timed_pull(urls[label] + digest, size)
                settle(owner[label])  # distribution caches after the response: count that too
                cpu.setdefault(label, []).append((cpu_seconds(owner[label].pid) - before) / (size / 1024**3))
                first.setdefault(label, []).append(ttfb)
                cold.setdefault(label, []).append(mbps(size, total))
            for label in order:
                warm.setdefault(label, []).append(mbps(size, timed_pull(urls[label] + digest, size)[1]))
            done = [
                f"{k} cold {cold[k][-1]:.0f} MB/s (first byte {first[k][-1] * 1000:.0f} ms), "
                f"warm {warm[k][-1]:.0f}"
                for k in order
            ]
            print(f"  run {rep + 1}: " + ", ".join(done), flush=True)
        med = statistics.median
        print(
            f"\nCold and warm pulls of a {args.size_mib} MiB blob, cache on SeaweedFS, median of {repeats}:"
        )
        for label in ("pier", "distribution"):
            print(
                f"  {label:13} cold {fmt(med(cold[label]))} MB/s, first byte "
                f"{med(first[label]) * 1000:.0f} ms, CPU {med(cpu[label]):.2f} s/GiB; "
                f"warm {fmt(med(warm[label]))} MB/s"
            )
        print(f"  pier vs distribution: cold {med(cold['pier']) / med(cold['distribution']):.2f}x, "
              f"warm {med(warm['pier']) / med(warm['distribution']):.2f}x")  # fmt: skip
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()
        if s3 is not None:
            with contextlib.suppress(Exception):
                s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
