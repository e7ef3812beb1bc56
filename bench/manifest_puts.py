"""Manifest PUTs per second, pier beside distribution.

A manifest PUT is where the registry checks that every blob the manifest names is there,
and where pier's half of GC's handshake runs (a look for markers, then the check again).
The blobs are pushed once; then each round PUTs distinct manifests (a new annotation each)
over one keep-alive connection, one after another, as a push of many tags does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from api import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Http, cpu_seconds, expect, push_small, start_pier
from servers import Server, start_distribution  # bench/servers.py


def push_blobs(server: Server, name: str, layers: int) -> tuple[dict[str, object], list[dict[str, object]]]:
    with Http(server.port) as http:
        config = push_small(http, name, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        return config, [push_small(http, name, os.urandom(4096)) for _ in range(layers)]


def put_round(
    server: Server,
    name: str,
    config: dict[str, object],
    layers: list[dict[str, object]],
    count: int,
    round_: int,
) -> tuple[float, float]:
    """PUTs per second and server CPU microseconds per PUT for one round."""
    documents = [
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **config},
                "layers": [{"mediaType": OCI_LAYER, **layer} for layer in layers],
                "annotations": {"bench": f"{round_}-{i}"},
            }
        ).encode()
        for i in range(count)
    ]
    with Http(server.port) as http:
        cpu, start = cpu_seconds(server.pid), time.perf_counter()
        for i, body in enumerate(documents):
            target = f"/v2/{name}/manifests/r{round_}-{i}"
            reply = http.request("PUT", target, {"Content-Type": OCI_MANIFEST}, body=body)
            expect(reply, 201, "manifest PUT")
        elapsed, used = time.perf_counter() - start, cpu_seconds(server.pid) - cpu
    return count / elapsed, used / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--count", type=int, default=1000, help="manifests per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server (default 5)")
    parser.add_argument("--layers", type=int, default=8, help="layers each manifest names (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pier-bench-puts-") as tmp:
        work = Path(tmp)
        servers = [start_pier("pier", work, []), start_distribution(work)]
        results: dict[str, list[tuple[float, float]]] = {}
        try:
            blobs = {s.label: push_blobs(s, "bench/puts", args.layers) for s in servers}
            for round_ in range(args.rounds):  # alternate, so the machine's moods fall on both
                for server in servers:
                    config, layers = blobs[server.label]
                    one = put_round(server, "bench/puts", config, layers, args.count, round_)
                    results.setdefault(server.label, []).append(one)
        finally:
            for server in servers:
                server.stop()
    print(f"manifest PUTs, {args.layers} layers each, {args.count} per round, median of {args.rounds} rounds")
    rate = {label: statistics.median(r for r, _ in runs) for label, runs in results.items()}
    cpu = {label: statistics.median(c for _, c in runs) for label, runs in results.items()}
    for label, runs in results.items():
        print(
            f"  {label:13} {rate[label]:8,.0f} PUT/s  {cpu[label]:7,.0f} µs CPU/PUT   runs: "
            + ", ".join(f"{r:,.0f}" for r, _ in runs)
        )
    print(
        f"  ratio pier/distribution: {rate['pier'] / rate['distribution']:.2f}x PUT/s, "
        f"{cpu['pier'] / cpu['distribution']:.2f}x CPU per PUT"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
