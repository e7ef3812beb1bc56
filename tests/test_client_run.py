"""`pier run`: the image's process in its own rootfs under runc, with limits enforced."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .helpers import push_blob, push_manifest, run_pier
from .images import build_image

pytestmark = pytest.mark.slow  # runc containers


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
    return run_pier(tmp_path / "home", *args)


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
    assert not blobs[-1].exists()  # its unpacked layer is all a container needs
    for layer in (tmp_path / "home" / "layers").glob("sha256-*"):
        shutil.rmtree(layer)  # now neither the blob nor the layer: fetched again
    result = pier(tmp_path, "run", "--rm", image_ref, "true")
    assert result.returncode == 0, result.stderr
    assert blobs[-1].is_file()


def test_an_unreachable_registry_is_a_one_line_error(tmp_path) -> None:
    from .servers import free_port

    result = pier(tmp_path, "run", "--rm", f"127.0.0.1:{free_port()}/nothing/here:v1", "true")
    assert result.returncode == 1
    assert result.stderr.startswith("pier: ") and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_second_run_reuses_the_unpacked_layers_and_containers_stay_apart(image_ref, tmp_path) -> None:
    home = tmp_path / "home"
    first = pier(
        tmp_path,
        "run",
        "--rm",
        image_ref,
        "sh",
        "-c",
        "echo changed > /etc/written-by-container; cat /etc/written-by-container",
    )
    assert first.returncode == 0 and first.stdout == "changed\n", first.stderr
    layers = sorted((home / "layers").glob("sha256-*"))
    assert len(layers) == 3  # one directory per layer of the image
    before = [(layer.stat().st_ino, layer.stat().st_mtime_ns) for layer in layers]
    for layer in layers:  # the container wrote to its own upper directory
        assert not (layer / "diff" / "etc" / "written-by-container").exists()

    for blob in (home / "blobs" / "sha256").iterdir():  # layers emptied: unpacking again would fail
        if blob.stat().st_size > 10_000:
            blob.write_bytes(b"")
    second = pier(
        tmp_path,
        "run",
        "--rm",
        image_ref,
        "sh",
        "-c",
        "cat /etc/written-by-container 2>/dev/null || echo clean",
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == "clean\n"  # a fresh container: the first one's change is gone
    after = sorted((home / "layers").glob("sha256-*"))
    assert [(layer.stat().st_ino, layer.stat().st_mtime_ns) for layer in after] == before


def test_kept_containers_are_listed_and_removed(image_ref, tmp_path) -> None:
    result = pier(tmp_path, "run", "--name", "kept-one", image_ref, "sh", "-c", "exit 3")
    assert result.returncode == 3
    listing = pier(tmp_path, "ps", "-a")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("kept-one"))
    assert "exited (3)" in row and "client/run:v1" in row
    assert "kept-one" not in pier(tmp_path, "ps").stdout  # only running ones without -a
    container = tmp_path / "home" / "containers" / "kept-one"
    assert not os.path.ismount(container / "rootfs")  # unmounted when it exited

    taken = pier(tmp_path, "run", "--name", "kept-one", image_ref, "true")
    assert taken.returncode == 1 and "already exists" in taken.stderr
    removed = pier(tmp_path, "rm", "kept-one")
    assert removed.returncode == 0, removed.stderr
    assert not container.exists()
    assert pier(tmp_path, "rm", "kept-one").returncode == 1


def test_a_process_past_its_memory_limit_is_killed(image_ref, tmp_path) -> None:
    # dd fills its whole 256 MiB block from /dev/zero before writing: far past a 32 MiB limit.
    hungry = ["busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]
    limited = pier(tmp_path, "run", "--rm", "--memory", "32m", image_ref, *hungry)
    assert limited.returncode == 137, (limited.returncode, limited.stderr)  # SIGKILL from the OOM killer
    free = pier(tmp_path, "run", "--rm", "--memory", "512m", image_ref, *hungry)
    assert free.returncode == 0, free.stderr


def test_runtime_choice_follows_the_cgroup_layout(tmp_path, monkeypatch) -> None:
    from puller.run.oci_runtime import RunError, cgroup_layout, find_runtime

    unified, hybrid, legacy = (tmp_path / name for name in ("unified-root", "hybrid-root", "legacy-root"))
    (unified).mkdir()
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("")
    (legacy / "memory").mkdir(parents=True)
    assert [cgroup_layout(p) for p in (unified, hybrid, legacy)] == ["unified", "hybrid", "legacy"]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("runc", "crun"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_runtime(None, "unified") == str(bin_dir / "crun")  # crun starts faster where it works
    assert find_runtime(None, "hybrid") == str(bin_dir / "runc")  # crun 1.8 refuses hybrid cgroups
    assert find_runtime("crun", "hybrid") == str(bin_dir / "crun")  # asked for by name: the user's call
    (bin_dir / "runc").unlink()
    with pytest.raises(RunError, match="crun does not support this machine's hybrid cgroup layout"):
        find_runtime(None, "hybrid")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RunError, match="no OCI runtime found"):
        find_runtime(None, "unified")


def test_the_machine_runtime_really_runs(image_ref, tmp_path) -> None:
    """Whatever find_runtime picks here must run a container (runc on this hybrid machine)."""
    from puller.run.oci_runtime import cgroup_layout, find_runtime

    chosen = os.path.basename(find_runtime(None))
    result = pier(tmp_path, "run", "--rm", image_ref, "true")
    assert result.returncode == 0, (chosen, cgroup_layout(), result.stderr)


def test_a_missing_command_exits_127_with_dockers_message(image_ref, tmp_path) -> None:
    """As docker: 127 for a command that is not there, 126 for one that cannot be executed."""
    assert pier(tmp_path, "pull", "-q", image_ref).returncode == 0
    cases = [
        (["nosuchcmd"], 127, 'exec: "nosuchcmd": executable file not found in $PATH'),
        (["/bin/nosuch", "-x"], 127, 'exec: "/bin/nosuch": stat /bin/nosuch: no such file or directory'),
        (["/etc/passwd"], 126, 'exec: "/etc/passwd": permission denied'),
        (["/etc"], 126, 'exec: "/etc": is a directory'),
    ]
    for command, code, message in cases:
        result = pier(tmp_path, "run", "--rm", image_ref, *command)
        assert (result.returncode, result.stderr) == (code, f"pier run: {message}\n"), command
    kept = pier(tmp_path, "run", "--name", "never-started", image_ref, "nosuchcmd")
    assert kept.returncode == 127
    assert "exited (127)" in pier(tmp_path, "ps", "-a").stdout  # as `docker ps -a` shows it
    found = pier(tmp_path, "run", "--rm", "-e", "PATH=/nowhere:/bin", image_ref, "true")
    assert found.returncode == 0, found.stderr  # looked up in the container's own PATH


def test_command_lookup_stays_inside_the_rootfs(tmp_path) -> None:
    """An image's symlink to a host path is followed as the container sees it, never on the host."""
    from puller.run.oci_runtime import CommandNotRunnable, check_command

    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "real").write_bytes(b"#!/bin/sh\n")
    (rootfs / "bin" / "real").chmod(0o755)
    (rootfs / "bin" / "host-python").symlink_to(os.path.realpath("/usr/bin/python3"))  # exists on the host
    (rootfs / "bin" / "up").symlink_to("../../../../../../../../usr/bin/python3")
    (rootfs / "bin" / "via-link").symlink_to("/bin/real")
    check_command(rootfs, ["real"], "/bin", "/", [])
    check_command(rootfs, ["via-link"], "/bin", "/", [])
    check_command(rootfs, ["../bin/real"], "/bin", "/bin", [])
    for name in ("host-python", "up"):
        with pytest.raises(CommandNotRunnable) as caught:
            check_command(rootfs, [name], "/bin", "/", [])
        assert caught.value.exit_code == 127
    with pytest.raises(CommandNotRunnable, match="executable file not found"):
        check_command(rootfs, ["real"], "/usr/bin", "/", [])
    check_command(rootfs, ["/tools/x"], "/bin", "/", ["/tools"])  # a volume: the runtime decides
    with pytest.raises(CommandNotRunnable, match=r'"./nothing": stat ./nothing: no such file'):
        check_command(rootfs, ["./nothing"], "/bin", "/bin", [])

    (rootfs / "bin" / "owner-only").write_bytes(b"#!/bin/sh\n")
    (rootfs / "bin" / "owner-only").chmod(0o700)  # owned by root, as the image's files are here
    check_command(rootfs, ["owner-only"], "/bin", "/", [], {"uid": 0, "gid": 0})
    with pytest.raises(CommandNotRunnable) as caught:
        check_command(rootfs, ["/bin/owner-only"], "/bin", "/", [], {"uid": 1000, "gid": 1000})
    assert (str(caught.value), caught.value.exit_code) == ('exec: "/bin/owner-only": permission denied', 126)


@pytest.mark.parametrize("user", ["\u00b2", "0:\u00b2", "\u0662"])  # superscript two, Arabic-Indic two
def test_a_user_of_non_ascii_digits_is_a_one_line_error(image_ref, user, tmp_path) -> None:
    """``str.isdigit`` holds for "²", which ``int`` refuses: only ASCII digits are a uid or gid."""
    ran = pier(tmp_path, "run", "--rm", "-u", user, image_ref, "true")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert ran.stderr.startswith("pier: ") and "not found in the image's /etc/" in ran.stderr, ran.stderr


def test_passwd_and_group_rows_with_non_ascii_digits_are_ignored(tmp_path) -> None:
    """An image's /etc/passwd or /etc/group whose uid or gid field is "²" names nobody."""
    from puller.run.oci_runtime import RunError, resolve_user

    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nodd:x:\u00b2:0::/:/bin/sh\ngid:x:7:\u00b2::/:/bin/sh\n"
    )
    (etc / "group").write_text("root:x:0:\nodd:x:\u00b2:\n")
    for spec, missing in (("odd", "user"), ("gid", "user"), ("root:odd", "group")):
        with pytest.raises(RunError, match=f"{missing} .* not found"):
            resolve_user(tmp_path / "rootfs", spec)
    assert resolve_user(tmp_path / "rootfs", "root:root") == {"uid": 0, "gid": 0}
