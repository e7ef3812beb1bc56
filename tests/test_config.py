"""Settings precedence: flags over environment over config file over defaults."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from registry.config import ConfigError, Settings, format_default, load_settings, parse_duration, parse_size

from .servers import REPO_ROOT, free_port, stop_process, wait_http


def test_defaults() -> None:
    settings = load_settings({}, environ={})
    assert settings.addr == "127.0.0.1:5000"
    assert settings.max_manifest_size == 4 * 1024 * 1024
    assert settings.root.endswith("pier/registry")


@pytest.mark.parametrize("suffix", ["toml", "yaml"])
def test_precedence(tmp_path, suffix: str) -> None:
    path = tmp_path / f"pier.{suffix}"
    if suffix == "toml":
        path.write_text(
            'addr = "127.0.0.1:1111"\nroot = "/from/file"\nmax-blob-size = "2GiB"\ndelete_enabled = false\n'
        )
    else:
        path.write_text(
            "addr: 127.0.0.1:1111\nroot: /from/file\nmax_blob_size: 2GiB\ndelete_enabled: false\n"
        )
    from_file = load_settings({}, environ={}, config_file=str(path))
    assert (from_file.addr, from_file.root, from_file.max_blob_size) == (
        "127.0.0.1:1111",
        "/from/file",
        2 << 30,
    )
    assert from_file.delete_enabled is False

    env = {"PIER_CONFIG": str(path), "PIER_ADDR": "127.0.0.1:2222", "PIER_DELETE_ENABLED": "yes"}
    from_env = load_settings({}, environ=env)
    assert (from_env.addr, from_env.root, from_env.delete_enabled) == ("127.0.0.1:2222", "/from/file", True)

    from_flags = load_settings({"addr": "127.0.0.1:3333", "root": None}, environ=env)
    assert (from_flags.addr, from_flags.root) == ("127.0.0.1:3333", "/from/file")


def test_bad_settings_are_errors(tmp_path) -> None:
    path = tmp_path / "pier.toml"
    path.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings({}, environ={}, config_file=str(path))
    with pytest.raises(ConfigError):
        load_settings({"addr": "no-port"}, environ={})
    with pytest.raises(ConfigError):
        load_settings({}, environ={"PIER_FSYNC": "maybe"})


def test_size_and_duration_parsing() -> None:
    assert parse_size("4MiB") == 4 << 20
    assert parse_size("4MB") == 4 * 10**6  # docker's units: what `pier images` prints reads back
    assert parse_size("1k") == 1024
    assert parse_size(12) == 12
    assert parse_duration("24h") == 86400
    assert parse_duration("90") == 90
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_serve_reads_environment_and_rejects_bad_config(tmp_path) -> None:
    port = free_port()
    env = {
        "PIER_ADDR": f"127.0.0.1:{port}",
        "PIER_ROOT": str(tmp_path / "data"),
        "PIER_ACCESS_LOG": "false",
        "PATH": "/usr/bin:/bin",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "registry", "serve"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", process)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200
        assert (tmp_path / "data").is_dir()
    finally:
        stop_process(process)
    bad = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--addr", "nowhere"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**env, "PIER_ADDR": ""},
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("pier serve: --addr must be HOST:PORT") and "Traceback" not in bad.stderr
    unusable = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--root", "/proc/no-such-folder"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert unusable.returncode == 2
    assert unusable.stderr.count("\n") == 1 and "no-such-folder" in unusable.stderr
    assert Settings().port == 5000


def test_a_bad_value_names_its_source_and_only_the_winning_value_counts(tmp_path) -> None:
    path = tmp_path / "pier.toml"
    path.write_text('max_blob_size = "lots"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: max_blob_size must be a size"):
        load_settings({}, environ={}, config_file=str(path))
    with pytest.raises(ConfigError, match=r"^PIER_WORKERS must be an integer, not 'many'$"):
        load_settings({}, environ={"PIER_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"^--s3-addressing-style must be one of auto, path, virtual"):
        load_settings({"s3_addressing_style": "sideways"}, environ={})
    # A flag overrides a broken variable and a broken file: neither is read.
    settings = load_settings(
        {"max_blob_size": "1GiB"}, environ={"PIER_MAX_BLOB_SIZE": "?"}, config_file=str(path)
    )
    assert settings.max_blob_size == 1 << 30


def test_help_defaults_are_written_as_users_write_them() -> None:
    assert [format_default(n) for n in ("max_blob_size", "token_lifetime", "shutdown_delay", "fsync")] == [
        "100GiB",
        "5m",
        "0s",
        "true",
    ]
