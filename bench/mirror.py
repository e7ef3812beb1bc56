#!/usr/bin/env python3
"""pier as a pull-through cache beside distribution's proxy mode (issue 7), side by side.

One upstream: Debian's ``docker-registry`` (distribution 2.8) on a folder, holding a
1 GiB blob in ``--repeats`` variants. In front of it, each with an empty cache of its own:

- pier, ``--proxy up=UPSTREAM`` (pulls as ``up/library/big``);
- distribution with ``proxy: remoteurl: UPSTREAM`` (its pull-through cache mode);
- and, for the warm comparison, pier without a mirror holding the same blobs.

Measured with ``curl -o /dev/null`` (the size is checked), each variant once cold (not
cached: the mirror fetches it from the upstream while streaming it) and once warm:

1. direct pull from the upstream: what a mirror's cold pull is compared with (issue
   target: pier's overhead under 10%);
2. cold pull through pier and through distribution's proxy;
3. warm pull through each, and a plain pull from pier without a mirror (target: equal);
4. 1 and 2 again with the upstream behind a relay (in this script) sending at most
   ``--limit-mbps`` (100 MB/s), as a remote registry over a fast link would: loopback's
   2 GB/s is no real upstream.

    .venv/bin/python bench/mirror.py [--size-mib 1024] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from api import (  # bench/api.py (bench/ is sys.path[0])
    CURL_PULL,
    MIB,
    BlobFile,
    MemorySampler,
    cpu_seconds,
    fmt,
    machine_facts,
    mbps,
    pull_curl,
    push_post_put,
    start_pier,
)
from servers import Server, free_port  # bench/servers.py


def start_distribution(label: str, work: Path, proxy: str | None = None, access_log: bool = False) -> Server:
    port = free_port()
    config = work / f"{label}.yml"
    text = (
        f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {str(not access_log).lower()}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / (label + '-data')}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if proxy:
        text += f"proxy:\n  remoteurl: {proxy}\n"
    config.write_text(text)
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    return Server(label, [binary, "serve", str(config)], port, work / f"{label}.log").start()


class RateLimit(threading.Thread):
    """A TCP relay in front of the upstream that sends responses at ``rate`` bytes/s at most
    (a token bucket, 1 MiB of burst): a remote registry over a fast link, on loopback."""

    def __init__(self, upstream_port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.upstream_port, self.rate, self.port = upstream_port, rate, free_port()
        self.ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.ready.set()
        async with server:
            await server.serve_forever()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(client_r, up_w, None), self._pipe(up_r, client_w, self.rate))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
        burst = float(MIB)
        allowance, last = burst, time.monotonic()
        try:
            while data := await reader.read(256 * 1024):
                if rate:
                    now = time.monotonic()
                    allowance = min(burst, allowance + (now - last) * rate) - len(data)
                    last = now
                    if allowance < 0:
                        await asyncio.sleep(-allowance / rate)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def forget(work: Path, digest: str) -> None:
    """Delete the mirrors' cached copies of a blob once it was measured.

    Every cold pull then writes into page cache the kernel has just freed, as on a server whose
    memory is in use. On this VM, page cache that grows into memory not used for a while costs
    2-3 CPU seconds per GiB written (the hypervisor backs it again), in whichever process
    writes, so without this the mirror that happens to pull first in a round pays for both.
    """
    for path in work.glob(f"*-data/**/{digest.split(':', 1)[1]}/data"):
        if not path.is_relative_to(work / "upstream-data") and not path.is_relative_to(
            work / "pier-local-data"
        ):
            path.unlink()


def settle(server: Server, quiet: float = 0.02, limit: float = 60.0) -> None:
    """Wait until the server has stopped working (under ``quiet`` CPU seconds in half a
    second): what it does after a response (distribution's proxy fetches the blob again and
    stores it) is part of what the pull cost."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(server.pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(server.pid)
        if now - last < quiet:
            return
        last = now


def upstream_gets(upstream: Server, digest: str) -> int:
    """The upstream's GETs of one blob, from its access log."""
    return upstream.log_path.read_text(errors="replace").count(f'"GET /v2/library/big/blobs/{digest} ')


def fan_out(url: str, size: int, clients: int, server: Server) -> dict[str, float]:
    """``clients`` curls started at once on one cold blob: each one's MB/s, the mirror's peak RSS."""
    sampler = MemorySampler({"mirror": server})
    sampler.start()
    before = cpu_seconds(server.pid)
    began = time.monotonic()
    running = [subprocess.Popen([*CURL_PULL, url], stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    rates = []
    for process in running:
        out, _ = process.communicate(timeout=600)
        code, got, seconds = out.split()
        if code != "200" or int(got) != size:
            raise RuntimeError(f"fan-out pull {url}: HTTP {code}, {got} bytes (expected 200, {size})")
        rates.append(mbps(size, float(seconds)))
    wall = time.monotonic() - began
    settle(server)
    sampler.stop()
    return {
        "min": min(rates),
        "median": statistics.median(rates),
        "wall": wall,
        "rss_mib": max(sampler.peaks.values()) / 1024,
        "cpu": cpu_seconds(server.pid) - before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="variants, each pulled cold then warm (3)")
    parser.add_argument("--limit-mbps", type=int, default=100, help="the rate-limited upstream's MB/s (100)")
    parser.add_argument("--fanout", type=int, default=16, help="clients pulling one cold blob at once (16)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if shutil.which("docker-registry") is None or shutil.which("curl") is None:
        print("bench: docker-registry and curl are needed (see bench/README.md)", file=sys.stderr)
        return 2
    size, repeats = args.size_mib * MIB, args.repeats
    work = Path(tempfile.mkdtemp(prefix="pier-mirror-bench-", dir=args.tmpdir))
    began = time.monotonic()
    servers: list[Server] = []

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", flush=True)

    try:
        facts = machine_facts(work)
        for key, value in facts.items():
            print(f"  {key:13} {value}")
        phase(f"writing a {args.size_mib} MiB blob in {repeats} variants")
        # Two more for the fan-out's cold blobs, and one to warm each mirror up.
        blob = BlobFile(work / "big.bin", size, repeats + 3)
        upstream = start_distribution("upstream", work, access_log=True)
        local = start_pier("pier-local", work, ["--fsync", "false"])
        pier = start_pier("pier-mirror", work, ["--proxy", f"up={upstream.url}", "--fsync", "false"])
        dist = start_distribution("distribution-proxy", work, upstream.url)
        servers += [upstream, local, pier, dist]
        slow = RateLimit(upstream.port, args.limit_mbps * 1e6)
        slow.start()
        slow.ready.wait()
        slow_pier = start_pier("pier-mirror-slow", work, ["--proxy", f"up={slow.url}", "--fsync", "false"])
        slow_dist = start_distribution("distribution-proxy-slow", work, slow.url)
        servers += [slow_pier, slow_dist]
        phase("pushing the variants to the upstream and to plain pier")
        for rep in range(repeats + 3):
            digest = blob.use(rep)
            push_post_put(upstream.port, "library/big", blob, digest)
            if rep < repeats:
                push_post_put(local.port, "library/big", blob, digest)
        blob.close()

        urls = {
            "direct from upstream": f"{upstream.url}/v2/library/big/blobs/",
            "pier mirror": f"{pier.url}/v2/up/library/big/blobs/",
            "distribution proxy": f"{dist.url}/v2/library/big/blobs/",
            "plain pier": f"{local.url}/v2/library/big/blobs/",
            "limited direct": f"{slow.url}/v2/library/big/blobs/",
            "limited pier mirror": f"{slow_pier.url}/v2/up/library/big/blobs/",
            "limited distribution proxy": f"{slow_dist.url}/v2/library/big/blobs/",
        }
        owner = {"pier mirror": pier, "distribution proxy": dist, "plain pier": local}
        runs: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}

        fetches: dict[str, list[int]] = {}

        def pull(label: str, kind: str, digest: str) -> None:
            server = owner.get(label)
            before = cpu_seconds(server.pid) if server else 0.0
            gets = upstream_gets(upstream, digest)
            elapsed = pull_curl(urls[label] + digest, size)
            runs.setdefault(f"{label} {kind}", []).append(mbps(size, elapsed))
            if server:
                settle(server)  # distribution's proxy caches in the background, after the response
                cpu.setdefault(f"{label} {kind}", []).append(
                    (cpu_seconds(server.pid) - before) / (size / 1024**3)
                )
            if kind == "cold" and not label.startswith("limited"):
                fetches.setdefault(label, []).append(upstream_gets(upstream, digest) - gets)

        # A server that has run a while: its first cold pull also pays for growing its heap
        # (fresh memory, costly in a VM), which a long-running mirror did long ago.
        warm_up = blob.digests[repeats + 2]
        for label in ("pier mirror", "distribution proxy"):
            pull_curl(urls[label] + warm_up, size)
        forget(work, warm_up)
        for rep in range(repeats):
            digest = blob.digests[rep]
            mirrors = ["pier mirror", "distribution proxy"][:: 1 if rep % 2 == 0 else -1]
            pull("direct from upstream", "", digest)
            for label in mirrors:
                pull(label, "cold", digest)
            for label in mirrors:
                pull(label, "warm", digest)
            pull("plain pier", "", digest)
            forget(work, digest)
            pull("limited direct", "", digest)
            for label in ("limited pier mirror", "limited distribution proxy")[:: 1 if rep % 2 == 0 else -1]:
                pull(label, "cold", digest)
            forget(work, digest)
            print(
                f"    run {rep + 1}: " + ", ".join(f"{k.strip()} {v[-1]:.0f}" for k, v in runs.items()),
                flush=True,
            )

        phase(f"{args.fanout} clients at once on one cold blob, through each mirror")
        fans = {}
        for offset, label in enumerate(["pier mirror", "distribution proxy"]):
            digest = blob.digests[repeats + offset]
            fans[label] = fan_out(urls[label] + digest, size, args.fanout, owner[label])
            fans[label]["upstream GETs"] = upstream_gets(upstream, digest)
            print(f"    {label}: {fans[label]}", flush=True)
        med = statistics.median
        direct = med(runs["direct from upstream "])
        print(f"\nResults: {args.size_mib} MiB blob, median of {repeats}, MB/s (MB = 10^6 bytes)")
        rows = [
            ("Direct pull from the upstream (distribution)", direct, None),
            ("Cold pull through pier's mirror", med(runs["pier mirror cold"]), direct),
            ("Cold pull through distribution's proxy", med(runs["distribution proxy cold"]), direct),
            ("Warm pull from pier's mirror", med(runs["pier mirror warm"]), med(runs["plain pier "])),
            ("Warm pull from distribution's proxy", med(runs["distribution proxy warm"]), direct),
            ("Plain pull from pier (no mirror)", med(runs["plain pier "]), None),
            (f"Direct pull, upstream limited to {args.limit_mbps} MB/s", med(runs["limited direct "]), None),
            (
                "  cold through pier's mirror",
                med(runs["limited pier mirror cold"]),
                med(runs["limited direct "]),
            ),
            (
                "  cold through distribution's proxy",
                med(runs["limited distribution proxy cold"]),
                med(runs["limited direct "]),
            ),
        ]
        table = []
        for name, rate, reference in rows:
            ratio = f"{rate / reference:.2f}x" if reference else ""
            print(f"  {name:48}{fmt(rate):>8}  {ratio}")
            table.append(
                {"measurement": name, "mbps": rate, "ratio": rate / reference if reference else None}
            )
        print(
            "Registry CPU seconds per GiB (median): " + ", ".join(f"{k} {med(v):.2f}" for k, v in cpu.items())
        )
        print("Upstream GETs per cold pull: " + ", ".join(f"{k} {v}" for k, v in fetches.items()))
        for label, fan in fans.items():
            single = med(runs[f"{label} cold"])
            print(
                f"  {args.fanout} clients, one cold blob, {label}: upstream GETs {fan['upstream GETs']}, "
                f"per client MB/s min {fmt(fan['min'])} median {fmt(fan['median'])} "
                f"({fan['min'] / single:.2f}x-{fan['median'] / single:.2f}x one client's cold pull), "
                f"all done in {fan['wall']:.1f} s, peak RSS {fan['rss_mib']:.0f} MiB, CPU {fan['cpu']:.1f} s"
            )
        print(f"Total time {time.monotonic() - began:.0f} s")
        if args.json:
            result: dict[str, Any] = {
                "machine": facts,
                "runs": runs,
                "cpu": cpu,
                "table": table,
                "fanout": fans,
            }
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
