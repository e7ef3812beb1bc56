"""`pier run`: the image's process in its own rootfs under runc, with limits enforced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import push_blob, push_manifest
from .images import build_image
from .servers import REPO_ROOT


@pytest.fixture
def image_ref(registry, tmp_path) -> str:
    image = build_image(
        tmp_path / "layout",
        "v1",
        cmd=["echo", "hello from the image's Cmd"],
        env=["PATH=/bin", "GREETING=from-image"],
    )
    for blob in image.blobs:
        push_blob(registry.url, "client/run", blob)
    push_manifest(registry.url, "client/run", "v1", image.manifest)
    return f"{registry.host}/client/run:v1"


def pier(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIER_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "puller", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_run_uses_the_image_cmd_and_env(image_ref, tmp_path) -> None:
    result = pier(tmp_path, "run", "--rm", image_ref)  # pulls first: nothing is local yet
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from the image's Cmd"
    assert not any((tmp_path / "home" / "containers").iterdir())  # --rm removed the bundle


def test_command_env_workdir_user_and_exit_code(image_ref, tmp_path) -> None:
    script = 'echo "$GREETING $EXTRA $(pwd) $(id -u):$(id -g)"; exit 7'
    result = pier(
        tmp_path,
        "run",
        "--rm",
        "-e",
        "EXTRA=added",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        image_ref,
        "sh",
        "-c",
        script,
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout.strip() == "from-image added /tmp 1000:1000"


def test_cgroup_limits_are_enforced_by_the_runtime(image_ref, tmp_path) -> None:
    script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    result = pier(
        tmp_path, "run", "--rm", "--memory", "64m", "--pids-limit", "32", image_ref, "sh", "-c", script
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 * 1024 * 1024), "32"]


def test_volumes_and_network_namespace(image_ref, tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from the host\n")
    result = pier(
        tmp_path,
        "run",
        "--rm",
        "-v",
        f"{shared}:/data",
        image_ref,
        "sh",
        "-c",
        "cat /data/input.txt; echo written > /data/output.txt; ls /sys/class/net",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:3] == ["from", "the", "host"]
    assert lines[3:] == ["lo"]  # --network none: only loopback
    assert (shared / "output.txt").read_text() == "written\n"
    readonly = pier(
        tmp_path, "run", "--rm", "-v", f"{shared}:/data:ro", image_ref, "sh", "-c", "echo x > /data/y"
    )
    assert readonly.returncode != 0 and not (shared / "y").exists()


def test_bad_options_are_one_line_errors(image_ref, tmp_path) -> None:
    result = pier(tmp_path, "run", "--rm", "-v", "relative:/data", image_ref, "true")
    assert result.returncode == 1
    assert result.stderr.startswith("pier: invalid -v") and "Traceback" not in result.stderr
    missing = pier(tmp_path, "run", "--rm", "-u", "nobody-here", image_ref, "true")
    assert missing.returncode == 1 and "not found in the image's /etc/passwd" in missing.stderr


def test_a_platform_missing_locally_is_pulled_before_running(registry, tmp_path) -> None:
    from .helpers import push_index
    from .images import build_index

    index = build_index(tmp_path / "layout", "multi")
    push_index(registry.url, "client/run-multi", index)
    ref = f"{registry.host}/client/run-multi:multi"
    assert pier(tmp_path, "pull", "--platform", "linux/arm64", ref).returncode == 0
    result = pier(tmp_path, "run", "--rm", "--platform", "linux/amd64", ref, "cat", "/etc/platform")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "linux/amd64\n"


def test_a_layer_lost_from_the_store_is_fetched_again(image_ref, tmp_path) -> None:
    assert pier(tmp_path, "pull", image_ref).returncode == 0
    blobs = sorted((tmp_path / "home" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    blobs[-1].unlink()  # the largest blob: a layer
    result = pier(tmp_path, "run", "--rm", image_ref, "true")
    assert result.returncode == 0, result.stderr
    assert blobs[-1].is_file()


def test_an_unreachable_registry_is_a_one_line_error(tmp_path) -> None:
    from .servers import free_port

    result = pier(tmp_path, "run", "--rm", f"127.0.0.1:{free_port()}/nothing/here:v1", "true")
    assert result.returncode == 1
    assert result.stderr.startswith("pier: ") and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
