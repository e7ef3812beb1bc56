"""``pier serve``, ``pier gc`` and ``pier fsck`` behave like the tools their users know.

Each test runs the real command (``python -m puller`` is the ``pier`` entry point) and looks
at its exit status, its stderr and what the server then does over HTTP.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from registry.config import Settings

from .oci import sha256
from .servers import REPO_ROOT, free_port, stop_process, wait_http

PIER = [sys.executable, "-m", "puller"]


def pier(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command expected to end at once (a server that starts anyway fails the timeout)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    return subprocess.run(
        [*PIER, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**clean, "COLUMNS": "400", **(env or {})},
        timeout=30,
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``pier serve ARGS`` on a free port; yields a function returning its base URL."""
    processes: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
        command = [*PIER, "serve", "--addr", f"127.0.0.1:{port}", "--root", str(tmp_path / f"d{port}"), *args]
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**clean, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        wait_http(f"http://127.0.0.1:{port}/v2/", process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        stop_process(process)


def delete_status(url: str) -> int:
    """Push a blob, then DELETE it: 202 when deletes are enabled, 405 when not."""
    with httpx.Client(base_url=url) as http:
        digest = sha256(b"x")
        assert http.post(f"/v2/t/r/blobs/uploads/?digest={digest}", content=b"x").status_code == 201
        response = http.delete(f"/v2/t/r/blobs/{digest}")
        if response.status_code == 405:
            assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
        return response.status_code


def test_boolean_settings_work_as_bare_flags_and_with_values(serve) -> None:
    off = {"PIER_DELETE_ENABLED": "false"}
    assert delete_status(serve("--delete-enabled", env=off)) == 202  # bare: true, and over the environment
    assert delete_status(serve("--delete-enabled=false")) == 405
    assert delete_status(serve("--no-delete-enabled", "--access-log", "false")) == 405
    assert delete_status(serve("--delete-enabled=true", env=off)) == 202


def test_a_bad_boolean_names_its_flag(tmp_path: Path) -> None:
    done = pier("serve", "--root", str(tmp_path), "--delete-enabled=maybe")
    assert done.returncode == 2
    assert done.stderr == "pier serve: --delete-enabled must be true or false, not 'maybe'\n"


@pytest.mark.parametrize(
    ("command", "flag"),
    [("serve", "--roo"), ("serve", "--bogus"), ("gc", "--roo"), ("fsck", "--re")],
)
def test_flags_are_never_abbreviated_and_a_typo_shows_the_subcommand_usage(
    tmp_path: Path, command: str, flag: str
) -> None:
    more = ["--addr", f"127.0.0.1:{free_port()}"] if command == "serve" else []
    done = pier(command, flag, str(tmp_path), *more)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"usage: pier {command} "), done.stderr
    assert f"unrecognized arguments: {flag}" in done.stderr and "Traceback" not in done.stderr


def test_help_names_each_variable_and_a_placeholder(tmp_path: Path) -> None:
    text = pier("serve", "--help").stdout
    assert "--max-blob-size SIZE" in text
    assert "(env PIER_MAX_BLOB_SIZE, default 100GiB)" in text
    assert "--log-level debug|info|warning|error" in text and "--addr HOST:PORT" in text
    assert "--delete-enabled [true|false]" in text and "(env PIER_DELETE_ENABLED, default true)" in text
    for field in dataclasses.fields(Settings):  # generated from Settings: none forgotten
        assert f"--{field.name.replace('_', '-')} " in text, field.name
        assert f"env PIER_{field.name.upper()}" in text, field.name
    gc = pier("gc", "--help").stdout
    assert "--root DIR|s3://BUCKET/PREFIX" in gc and "env PIER_ROOT" in gc and "--grace DURATION" in gc


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_said_in_one_line(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = pier("serve", "--addr", f"127.0.0.1:{port}", "--root", str(tmp_path), "--workers", workers)
    assert done.returncode == 2
    assert done.stderr == f"pier serve: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_a_bad_log_level_names_where_it_came_from(tmp_path: Path) -> None:
    levels = "debug, info, warning, error"
    flag = pier("serve", "--root", str(tmp_path), "--log-level", "loud")
    assert flag.returncode == 2
    assert flag.stderr == f"pier serve: --log-level must be one of {levels}, not 'loud'\n"
    env = pier("serve", "--root", str(tmp_path), env={"PIER_LOG_LEVEL": "LOUD"})
    assert env.stderr == f"pier serve: PIER_LOG_LEVEL must be one of {levels}, not 'LOUD'\n"
    config = tmp_path / "pier.toml"
    config.write_text('log_level = "verbose"\n')
    from_file = pier("serve", "--config", str(config))
    assert from_file.stderr == f"pier serve: {config}: log_level must be one of {levels}, not 'verbose'\n"


def test_maintenance_commands_name_the_flag_at_fault(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    grace = pier("gc", "--root", str(tmp_path / "data"), "--grace", "soon")
    assert grace.returncode == 2 and grace.stderr.startswith("pier gc: --grace must be a duration")
    fsync = pier("fsck", "--root", str(tmp_path / "data"), "--fsync=maybe")
    assert fsync.returncode == 2 and fsync.stderr == "pier fsck: --fsync must be true or false, not 'maybe'\n"
    bare = pier("fsck", "--root", str(tmp_path / "data"), "--fsync")
    assert bare.returncode == 0, bare.stderr
