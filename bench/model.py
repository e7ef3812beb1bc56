#!/usr/bin/env python3
"""Models as OCI artifacts: ``pier model push/pull`` beside skopeo copying an OCI layout of the same blobs.

The model is a directory of random bytes shaped like a sharded safetensors checkpoint
(three shards, 1.5 + 1.5 + 1 GiB by default) plus small configs and a 2 MiB tokenizer;
it is written once and kept under bench/.cache/model/. The OCI layout skopeo reads holds
the very same files as its blobs (hard links), with the manifest and config pier made, so
both tools send the same bytes to the same kind of registry: ``pier serve`` on local disk,
a new data folder for every timed push.

In one run:

1. The disk's sequential write speed: ``dd bs=4M count=1024 conv=fdatasync``, 3 times.
2. Push, each round to a fresh registry, order alternating: skopeo (``oci:`` layout ->
   ``docker://``), pier with a fresh PIER_HOME (it hashes every file: the cold case), and
   pier with its file index warm (digests known, as skopeo's layout knows them).
3. Pull from a registry holding the model, into a new folder each time, order alternating:
   skopeo (``docker://`` -> ``oci:``) and ``pier model pull`` with a fresh PIER_HOME.
4. Re-push of the unchanged directory; push of a new version with one changed file; a
   partial pull by pattern: times, and the blob bytes the registry received or served
   (its own ``/metrics`` counters).

Before every timed command the page cache is dropped (``sync`` and ``drop_caches``, as
root), so each starts from the disk. Each command's peak RSS comes from ``wait4``.

    .venv/bin/python bench/model.py [--shards-mib 1536,1536,1024] [--rounds 3] [--json out.json]

See bench/README.md, section "Models (issue 22)".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from api import start_pier  # bench/api.py: pier serve on a free port, quiet
from servers import Server

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / "bench" / ".cache" / "model"
PIER = [sys.executable, "-m", "puller"]
MIB = 1 << 20


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB, stdout) of one command, after dropping the page cache."""
    drop_caches()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS, not the largest so far
        elapsed = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:6])} failed ({process.returncode}): {err.read()[-2000:]}")
        return elapsed, usage.ru_maxrss // 1024, out.read()


def make_model(shards_mib: list[int]) -> Path:
    """The model directory, written once: random shards (they do not compress) and small files."""
    key = "-".join(map(str, shards_mib))
    root = CACHE / f"model-{key}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    count = len(shards_mib)
    for number, size in enumerate(shards_mib, 1):
        with open(root / f"model-{number:05d}-of-{count:05d}.safetensors", "wb") as stream:
            for _ in range(size):
                stream.write(os.urandom(MIB))
    (root / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096})
    )
    (root / "generation_config.json").write_text(json.dumps({"temperature": 0.6}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8192}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": [os.urandom(8).hex() for _ in range(120_000)]}))
    (root / "README.md").write_text("# bench model\nRandom bytes shaped like a checkpoint.\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    past = time.time() - 3600
    for path in root.iterdir():
        os.utime(path, (past, past))
    (root / ".complete").touch()
    return root


def oci_layout(model: Path, manifest: dict, config: bytes, layout: Path) -> None:
    """An OCI layout whose blobs are the model's own files (hard links) and pier's config and manifest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for layer in manifest["layers"]:
        os.link(
            model / layer["annotations"]["org.cncf.model.filepath"], blobs / layer["digest"].split(":")[1]
        )
    (blobs / manifest["config"]["digest"].split(":")[1]).write_bytes(config)
    body = json.dumps(manifest).encode()
    digest = hashlib.sha256(body).hexdigest()
    (blobs / digest).write_bytes(body)
    descriptor = {
        "mediaType": manifest["mediaType"],
        "digest": f"sha256:{digest}",
        "size": len(body),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))


def metric(server: Server, name: str, route: str) -> int:
    text = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'route="{route}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def received(server: Server) -> int:
    return metric(server, "pier_http_received_bytes_total", "/v2/{name}/blobs/uploads/{uuid}")


def served(server: Server) -> int:
    return metric(server, "pier_http_sent_bytes_total", "/v2/{name}/blobs/{digest}")


def pier_env(home: Path) -> dict[str, str]:
    return {**os.environ, "PIER_HOME": str(home)}


def skopeo_command(work: Path, *args: str) -> list[str]:
    policy = work / "policy.json"
    if not policy.exists():
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return ["skopeo", "--policy", str(policy), "copy", "--quiet", "--preserve-digests", *args]


def disk_write_speed(work: Path) -> float:
    speeds = []
    for _ in range(3):
        target = work / "dd.bin"
        done = subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=4M", "count=1024", "conv=fdatasync"],
            capture_output=True,
            text=True,
            check=True,
        )
        match = re.search(r"copied, ([\d.]+) s", done.stderr)
        assert match is not None, done.stderr
        speeds.append((1 << 30) / float(match.group(1)) / 1e6)
        target.unlink()
    return statistics.median(speeds)


@contextlib.contextmanager
def registry(work: Path, label: str) -> Iterator[Server]:
    server = start_pier(label, work, [])
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work / f"{label}-data", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards-mib", default="1536,1536,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shards = [int(x) for x in args.shards_mib.split(",")]
    model = make_model(shards)
    total = sum(p.stat().st_size for p in model.iterdir() if p.is_file() and not p.name.startswith("."))
    results: dict[str, object] = {"model_bytes": total, "files": len(list(model.glob("[!.]*")))}
    work = Path(tempfile.mkdtemp(prefix="pier-model-bench-", dir=REPO_ROOT / "bench" / ".cache"))
    try:
        results["disk_write_MBps"] = disk_write_speed(work)
        print(f"disk: {results['disk_write_MBps']:.0f} MB/s sequential write (dd conv=fdatasync)", flush=True)
        warm_home = work / "warm-home"
        with registry(work, "prepare") as server:
            subprocess.run(
                [*PIER, "model", "push", "-q", f"127.0.0.1:{server.port}/bench/model:v1", str(model)],
                env=pier_env(warm_home), check=True, capture_output=True,
            )  # fmt: skip
            accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            request = urllib.request.Request(f"{server.url}/v2/bench/model/manifests/v1", headers=accept)
            manifest = json.loads(urllib.request.urlopen(request).read())
            config = urllib.request.urlopen(
                f"{server.url}/v2/bench/model/blobs/{manifest['config']['digest']}"
            ).read()
        layout = work / "layout"
        oci_layout(model, manifest, config, layout)

        pushes: dict[str, list[float]] = {"skopeo": [], "pier (cold)": [], "pier (index warm)": []}
        rss: dict[str, list[int]] = {key: [] for key in [*pushes, "pier pull", "skopeo pull"]}
        for round_number in range(args.rounds):
            order = list(pushes) if round_number % 2 == 0 else list(reversed(pushes))
            for who in order:
                with registry(work, f"push-{round_number}-{who.split()[0]}") as server:
                    target = f"127.0.0.1:{server.port}/bench/model:v1"
                    if who == "skopeo":
                        command = skopeo_command(
                            work, "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{target}"
                        )
                        env = None
                    else:
                        home = warm_home if "warm" in who else work / f"home-push-{round_number}"
                        command, env = [*PIER, "model", "push", "-q", target, str(model)], pier_env(home)
                    seconds, peak, _ = timed(command, env)
                    assert received(server) >= total, f"{who} did not send the model"
                pushes[who].append(seconds)
                rss[who].append(peak)
                print(
                    f"push {who}: {seconds:.2f} s ({total / seconds / 1e6:.0f} MB/s), RSS {peak} MiB",
                    flush=True,
                )
        results["push_seconds"] = pushes

        pulls: dict[str, list[float]] = {"skopeo": [], "pier": []}
        pulls_durable: dict[str, list[float]] = {"skopeo": [], "pier": []}
        with registry(work, "pull") as server:
            target = f"127.0.0.1:{server.port}/bench/model:v1"
            subprocess.run(
                [*PIER, "model", "push", "-q", target, str(model)],
                env=pier_env(warm_home),
                check=True,
                capture_output=True,
            )
            for round_number in range(args.rounds):
                order = list(pulls) if round_number % 2 == 0 else list(reversed(pulls))
                for who in order:
                    out = work / f"pull-{round_number}-{who}"
                    if who == "skopeo":
                        command = skopeo_command(
                            work, "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:v1"
                        )
                        env = None
                    else:
                        command, env = (
                            [*PIER, "model", "pull", "-q", target, str(out)],
                            pier_env(work / f"home-pull-{round_number}"),
                        )
                    seconds, peak, _ = timed(command, env)
                    started = time.monotonic()
                    subprocess.run(
                        ["sync"], check=True
                    )  # what the tool left unwritten (skopeo does not fsync blobs)
                    durable = seconds + time.monotonic() - started
                    pulls[who].append(seconds)
                    pulls_durable[who].append(durable)
                    rss[f"{who} pull"].append(peak)
                    print(
                        f"pull {who}: {seconds:.2f} s ({total / seconds / 1e6:.0f} MB/s), on disk after "
                        f"{durable:.2f} s, RSS {peak} MiB",
                        flush=True,
                    )
                    shutil.rmtree(out)
            results["pull_seconds"] = pulls
            results["pull_durable_seconds"] = pulls_durable

            before = received(server)
            seconds, peak, stdout = timed([*PIER, "model", "push", target, str(model)], pier_env(warm_home))
            results["repush"] = {
                "seconds": seconds,
                "uploaded": received(server) - before,
                "rss": peak,
                "output": stdout.splitlines()[-2],
            }
            print(f"re-push: {seconds:.2f} s, {received(server) - before} bytes uploaded", flush=True)

            # A new version: one file rewritten in place, the rest untouched (the index knows them).
            changed = json.dumps({"vocab": [os.urandom(8).hex() for _ in range(120_000)]}).encode()
            (model / "tokenizer.json").write_bytes(changed)
            version2 = model
            before = received(server)
            seconds, peak, stdout = timed(
                [*PIER, "model", "push", target.replace(":v1", ":v2"), str(version2)], pier_env(warm_home)
            )
            sent = received(server) - before
            results["new_version"] = {
                "seconds": seconds,
                "uploaded": sent,
                "changed_file": len(changed),
                "rss": peak,
            }
            print(
                f"new version: {seconds:.2f} s, {sent} bytes uploaded (the changed file: {len(changed)})",
                flush=True,
            )

            before = served(server)
            out = work / "partial"
            seconds, peak, _ = timed(
                [*PIER, "model", "pull", "--include", "tokenizer*", target, str(out)],
                pier_env(work / "home-partial"),
            )
            matching = sum(p.stat().st_size for p in out.iterdir())
            results["partial_pull"] = {
                "seconds": seconds,
                "served": served(server) - before,
                "matching_files": matching,
                "config": manifest["config"]["size"],
            }
            print(
                f"partial pull: {seconds:.2f} s, {served(server) - before} bytes served, {matching} matching",
                flush=True,
            )
        results["rss_mib"] = {key: max(values) for key, values in rss.items() if values}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "push_median": {k: statistics.median(v) for k, v in pushes.items()},
        "pull_median": {k: statistics.median(v) for k, v in pulls.items()},
        "pull_durable_median": {k: statistics.median(v) for k, v in pulls_durable.items()},
    }
    results.update(summary)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
