#!/usr/bin/env python3
"""A 1 GiB blob GET from pier beside nginx serving the same file, and distribution (issue 24).

One store on local disk holds a blob of random bytes, pushed to pier. Three servers send it:

- pier (``pier serve``): over plain HTTP the blob goes out with ``sendfile`` (the ASGI
  ``zerocopysend`` extension of ``registry/protocol.py``);
- nginx (``nginx-light``, ``sendfile on``) serving the blob's file from pier's store: the speed
  limit of a GET on this machine;
- Debian's ``docker-registry`` (distribution 2.8) serving the same store read-only (pier's
  ``blobs/`` and ``repositories/`` are distribution's layout).

Each pull is ``curl -o /dev/null`` (size checked), the file warm in the page cache, the
servers taking turns, ``--repeats`` rounds. Reported: median MB/s, and each server's CPU
seconds per GiB sent (``/proc``). Also ``--ranges``: 64 MiB ranges of the blob.

    .venv/bin/python bench/blob_get.py [--size-mib 1024] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api import MIB, BlobFile, machine_facts, mbps, pull_curl, push_post_put, start_pier
from servers import Server, family_cpu_seconds, free_port


def start_nginx(work: Path, root: Path) -> Server:
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(
        ("user root;\n" if os.getuid() == 0 else "")  # its worker reads pier's private temporary store
        + f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'nginx.err'} warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; location = /v2/ {{ return 200; }} }}\n}}\n"
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return Server("nginx", [binary, "-c", str(config), "-p", str(work)], port, work / "nginx.log").start()


def start_distribution(work: Path, store: Path) -> Server:
    port = free_port()
    mirror_root = work / "distribution-data" / "docker" / "registry"
    mirror_root.mkdir(parents=True)
    (mirror_root / "v2").symlink_to(store)
    config = work / "distribution.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'distribution-data'}\n"
        "  maintenance:\n    readonly:\n      enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    return Server("distribution", [binary, "serve", str(config)], port, work / "distribution.log").start()


def timed(server: Server, url: str, size: int, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, server CPU seconds) of one pull."""
    before = family_cpu_seconds(server.pid)
    seconds = pull_curl(url, size, headers)
    return seconds, family_cpu_seconds(server.pid) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for tool in ("curl", "nginx", "docker-registry"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is missing: apt-get install curl nginx-light docker-registry")
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="pier-blob-get-") as folder:
        work = Path(folder)
        blob = BlobFile(work / "blob", size, 1)
        digest = blob.use(0)
        pier = start_pier("pier", work, ["--fsync", "false"])
        servers: list[Server] = [pier]
        try:
            push_post_put(pier.port, "bench/big", blob, digest)
            store = work / "pier-data"
            data = store / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data"
            nginx = start_nginx(work, data.parent)
            servers.append(nginx)
            distribution = start_distribution(work, store)
            servers.append(distribution)
            urls = {
                "pier": f"http://127.0.0.1:{pier.port}/v2/bench/big/blobs/{digest}",
                "nginx": f"http://127.0.0.1:{nginx.port}/data",
                "distribution": f"http://127.0.0.1:{distribution.port}/v2/bench/big/blobs/{digest}",
            }
            by_label = {"pier": pier, "nginx": nginx, "distribution": distribution}
            pull_curl(urls["nginx"], size)  # the page cache holds the file from here on
            results: dict[str, dict[str, list[float]]] = {
                k: {"mbps": [], "cpu": [], "range": []} for k in urls
            }
            span = min(64 * MIB, size // 4)
            for round_ in range(args.repeats):
                order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
                for label in order:
                    seconds, cpu = timed(by_label[label], urls[label], size)
                    results[label]["mbps"].append(mbps(size, seconds))
                    results[label]["cpu"].append(cpu / (size / (1 << 30)))
                    first = (round_ * 7 * span) % (size - span + 1)
                    ranged = {"range": f"bytes={first}-{first + span - 1}"}
                    started = time.perf_counter()
                    subprocess.run(
                        ["curl", "-s", "-o", "/dev/null", "-H", f"range: {ranged['range']}", urls[label]],
                        check=True,
                    )
                    results[label]["range"].append(mbps(span, time.perf_counter() - started))
                print(
                    f"round {round_ + 1}: "
                    + ", ".join(f"{k} {results[k]['mbps'][-1]:,.0f} MB/s" for k in urls),
                    flush=True,
                )
        finally:
            for server in servers:
                server.stop()
            blob.close()
    summary: dict[str, dict[str, float | list[float]]] = {
        label: {
            "mbps": statistics.median(found["mbps"]),
            "cpu_s_per_gib": statistics.median(found["cpu"]),
            "range_mbps": statistics.median(found["range"]),
            "runs": found["mbps"],
        }
        for label, found in results.items()
    }
    speed = {label: float(statistics.median(found["mbps"])) for label, found in results.items()}
    print(f"\n{args.size_mib} MiB blob, medians of {args.repeats}:\n")
    print("| Server | MB/s | vs nginx | CPU s per GiB | 64 MiB ranges, MB/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label in summary:
        cpu, ranges = statistics.median(results[label]["cpu"]), statistics.median(results[label]["range"])
        ratio = speed[label] / speed["nginx"]
        print(f"| {label} | {speed[label]:,.0f} | {ratio:.2f}x | {cpu:.2f} | {ranges:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(Path(".")), "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
