"""Local commands: tag, images, inspect, rmi, save/load (read by skopeo and umoci), login/logout."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from puller.store.content_store import ContentStore

from .helpers import push_index, run_pier
from .images import ImageIndex, build_image, build_index, random_files, sample_layers

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, skopeo and umoci


@pytest.fixture
def index(tmp_path) -> ImageIndex:
    return build_index(tmp_path / "layout", "v1")


@pytest.fixture
def pulled(registry, index, tmp_path) -> tuple[str, str]:
    """(home, reference) of the amd64 image of ``index``, pulled into a fresh store."""
    repo = f"client/local-{os.urandom(4).hex()}"
    push_index(registry.url, repo, index)
    home = tmp_path / "home"
    reference = f"{registry.host}/{repo}:v1"
    result = run_pier(home, "pull", "--platform", "linux/amd64", reference)
    assert result.returncode == 0, result.stderr
    return str(home), reference


def test_tag_images_inspect(pulled, index) -> None:
    home, reference = pulled
    assert run_pier(home, "tag", reference, "localhost:5000/team/model:v2").returncode == 0
    listing = run_pier(home, "images")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    short = index.digest[:19]
    assert (reference.rsplit(":", 1)[0], "v1", short) in rows
    assert ("localhost:5000/team/model", "v2", short) in rows
    assert run_pier(home, "images", "-q").stdout.split() == [index.digest]

    inspected = run_pier(home, "inspect", "localhost:5000/team/model:v2")
    assert inspected.returncode == 0, inspected.stderr
    document = json.loads(inspected.stdout)
    amd = index.image("amd64")
    assert document["Digest"] == index.digest and document["ManifestDigest"] == amd.digest
    assert document["Config"] == json.loads(amd.config.read())
    assert [layer["digest"] for layer in document["Manifest"]["layers"]] == [b.digest for b in amd.layers]

    bad = run_pier(home, "tag", reference, "Not/Valid")
    assert bad.returncode == 1 and "lowercase" in bad.stderr


def test_rmi_deletes_only_what_no_other_tag_needs(registry, tmp_path) -> None:
    shared = sample_layers()
    first = build_image(tmp_path / "a", "v1", layers=[*shared, random_files([5000], "first/f", seed=1)])
    second = build_image(tmp_path / "b", "v1", layers=[*shared, random_files([5000], "second/f", seed=2)])
    from .helpers import push_blob, push_manifest

    home = tmp_path / "home"
    for name, image in (("first", first), ("second", second)):
        for blob in image.blobs:
            push_blob(registry.url, f"client/rmi-{name}", blob)
        push_manifest(registry.url, f"client/rmi-{name}", "v1", image.manifest)
        assert run_pier(home, "pull", "-q", f"{registry.host}/client/rmi-{name}:v1").returncode == 0
    store = ContentStore(home)
    removed = run_pier(home, "rmi", f"{registry.host}/client/rmi-first:v1")
    assert removed.returncode == 0, removed.stderr
    kept = {b.digest for b in (second.manifest, *second.blobs)}
    only_first = {b.digest for b in (first.manifest, *first.blobs)} - kept
    assert only_first and not any(store.has(d) for d in only_first)
    assert all(store.has(d) for d in kept)  # shared base layers stay: the second image needs them
    again = run_pier(home, "rmi", f"{registry.host}/client/rmi-first:v1")
    assert again.returncode == 1 and "no such image" in again.stderr


def test_save_is_read_by_skopeo_and_umoci(pulled, index, skopeo, registry, tmp_path) -> None:
    home, reference = pulled
    layout = tmp_path / "saved"
    saved = run_pier(home, "save", reference, "-o", str(layout))
    assert saved.returncode == 0, saved.stderr
    amd = index.image("amd64")
    # Only the amd64 image is local: it is saved in the index's place, and said so.
    assert "holds only the linux/amd64 image" in saved.stderr
    skopeo.run(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/client/from-save:v1",
    )
    inspected = skopeo.json(
        "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/client/from-save:v1"
    )
    assert inspected["config"]["digest"] == amd.config.digest
    assert [layer["digest"] for layer in inspected["layers"]] == [b.digest for b in amd.layers]
    umoci = shutil.which("umoci")
    assert umoci, "umoci is not installed (Debian: apt-get install umoci)"
    single = tmp_path / "single"
    assert (
        run_pier(home, "save", f"{reference.rsplit(':', 1)[0]}@{amd.digest}", "-o", str(single)).returncode
        == 0
    )
    bundle = tmp_path / "bundle"
    unpacked = subprocess.run(
        [umoci, "unpack", "--image", f"{single}:{amd.digest}", str(bundle)], capture_output=True, timeout=120
    )
    assert unpacked.returncode == 0, unpacked.stderr.decode(errors="replace")
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()


def test_load_what_skopeo_wrote_and_refuse_a_tampered_layout(registry, index, skopeo, tmp_path) -> None:
    push_index(registry.url, "client/for-load", index)
    layout = tmp_path / "from-skopeo"
    skopeo.pull("client/for-load", "v1", layout, "--all")
    home = tmp_path / "home"
    loaded = run_pier(home, "load", str(layout), "--name", "example.org/team/loaded")
    assert loaded.returncode == 0, loaded.stderr
    assert f"Loaded example.org/team/loaded:v1 {index.digest}" in loaded.stdout
    store = ContentStore(home)
    assert all(store.read(b.digest) == b.read() for b in index.blobs)
    run = run_pier(
        home, "run", "--rm", "--platform", "linux/arm64", "example.org/team/loaded:v1", "cat", "/etc/platform"
    )
    assert run.returncode == 0 and run.stdout == "linux/arm64\n", run.stderr

    layer = index.image("amd64").layers[-1]
    path = layout / "blobs" / "sha256" / layer.digest.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    other = tmp_path / "other"
    refused = run_pier(other, "load", str(layout), "--name", "example.org/team/loaded")
    assert refused.returncode == 1
    assert f"blob {layer.digest} does not match its digest" in refused.stderr
    assert not ContentStore(other).has(layer.digest)
    assert ContentStore(other).get_ref("example.org/team/loaded", "v1") is None

    not_layout = run_pier(other, "load", str(tmp_path))
    assert not_layout.returncode == 1 and "is not an OCI image layout" in not_layout.stderr


def pier_with_config(tmp_path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_pier(tmp_path / "home", *args, env={"DOCKER_CONFIG": str(tmp_path / "docker")}, stdin=stdin)


def test_login_checks_credentials_and_logout_forgets_them(token_registry, index, tmp_path) -> None:
    host, tokens = token_registry
    config = tmp_path / "docker" / "config.json"
    wrong = pier_with_config(tmp_path, "login", host, "-u", "alice", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert not config.exists()  # nothing saved for a failed login

    good = pier_with_config(tmp_path, "login", host, "-u", "alice", "--password-stdin", stdin="wonderland\n")
    assert good.returncode == 0, good.stderr
    assert "Login Succeeded" in good.stdout
    saved = json.loads(config.read_text())
    assert base64.b64decode(saved["auths"][host]["auth"]) == b"alice:wonderland"
    assert config.stat().st_mode & 0o077 == 0  # secrets: owner only

    push_token = tokens.issue("alice", ["repository:client/after-login:pull,push"])
    push_index(f"http://{host}", "client/after-login", index, {"Authorization": f"Bearer {push_token}"})
    pulled = pier_with_config(tmp_path, "pull", "-q", f"{host}/client/after-login:v1")
    assert pulled.returncode == 0, pulled.stderr
    assert tokens.requests[-1]["user"] == "alice"

    out = pier_with_config(tmp_path, "logout", host)
    assert out.returncode == 0, out.stderr
    assert host not in json.loads(config.read_text()).get("auths", {})
    twice = pier_with_config(tmp_path, "logout", host)
    assert twice.returncode == 1 and "not logged in" in twice.stderr


def test_unpack_writes_the_rootfs_into_a_new_directory(pulled, tmp_path) -> None:
    home, reference = pulled
    target = tmp_path / "rootfs"
    result = run_pier(home, "unpack", reference, str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "bin" / "busybox").is_file()
    assert (target / "etc" / "platform").read_text() == "linux/amd64\n"
    again = run_pier(home, "unpack", reference, str(target))
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_pier_pulls_and_runs_what_skopeo_pushed(registry, skopeo, tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", cmd=["cat", "/etc/motd"])
    skopeo.push(tmp_path / "layout", "v1", "client/by-skopeo")
    home = tmp_path / "home"
    reference = f"{registry.host}/client/by-skopeo:v1"
    pulled = run_pier(home, "pull", "-q", reference)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == image.digest
    assert all(ContentStore(home).read(b.digest) == b.read() for b in image.blobs)
    ran = run_pier(home, "run", "--rm", reference)
    assert ran.returncode == 0 and ran.stdout == "built by pier tests\n", ran.stderr


def test_version_and_flags_are_matched_exactly(tmp_path) -> None:
    from importlib.metadata import version

    shown = run_pier(tmp_path / "home", "--version")
    assert shown.returncode == 0 and shown.stdout == f"pier {version('pier')}\n"
    for args, usage in (
        (["pull", "--qui", "example.org/x"], "usage: pier pull"),  # no prefix matching of --quiet
        (["images", "--bogus"], "usage: pier images"),
        (["unpack", "--plat", "linux/amd64", "x", str(tmp_path / "t")], "usage: pier unpack"),
    ):
        wrong = run_pier(tmp_path / "home", *args)
        assert wrong.returncode == 2, (args, wrong.stderr)
        assert wrong.stderr.startswith(usage), wrong.stderr  # the subcommand's usage, not pier's
        assert f"unrecognized arguments: {args[1]}" in wrong.stderr


def test_rmi_refuses_what_a_container_or_several_repositories_hold_unless_forced(pulled, index) -> None:
    home, reference = pulled
    ran = run_pier(home, "run", "--name", "keep", reference, "true")
    assert ran.returncode == 0, ran.stderr
    used = run_pier(home, "rmi", reference)
    assert used.returncode == 1 and "conflict: container keep uses" in used.stderr, used.stderr
    assert run_pier(home, "images", "-q").stdout.split() == [index.digest]  # nothing removed

    assert run_pier(home, "tag", reference, "example.org/other/name:v1").returncode == 0
    assert run_pier(home, "rmi", reference).returncode == 0  # another tag keeps the image
    assert run_pier(home, "tag", "example.org/other/name:v1", "example.org/third:v1").returncode == 0
    by_digest = run_pier(home, "rmi", index.digest[:19])  # as `pier images` shows it
    assert by_digest.returncode == 1 and "tagged in several repositories" in by_digest.stderr
    forced = run_pier(home, "rmi", "-f", index.digest)
    assert forced.returncode == 0, forced.stderr
    assert "Untagged: example.org/other/name:v1" in forced.stdout
    assert "Untagged: example.org/third:v1" in forced.stdout
    assert run_pier(home, "images", "-q").stdout == ""
    assert run_pier(home, "ps", "-a", "-q").stdout == "keep\n"  # the container stays, as docker's does
    assert run_pier(home, "rm", "keep").returncode == 0


def test_images_and_ps_quiet_and_format(pulled, index) -> None:
    home, reference = pulled
    repository = reference.rsplit(":", 1)[0]
    assert run_pier(home, "tag", reference, f"{repository}:v2").returncode == 0
    quiet = run_pier(home, "images", "-q")
    assert quiet.stdout == f"{index.digest}\n"  # one line per image, not per tag
    listed = run_pier(home, "images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{repository}:v1 {index.digest}",
        f"{repository}:v2 {index.digest}",
    ]
    typo = run_pier(home, "images", "--format", "{{.Repo}}")
    assert typo.returncode == 1
    assert typo.stderr == (
        "pier: --format: no field 'Repo' at the top level (fields: Created, Digest, Repository, Size, Tag)\n"
    )

    assert run_pier(home, "run", "--name", "first", reference, "sh", "-c", "exit 3").returncode == 3
    assert run_pier(home, "ps", "-q").stdout == ""  # only running ones without -a
    assert run_pier(home, "ps", "-a", "-q").stdout == "first\n"
    shown = run_pier(home, "ps", "-a", "--format", "{{.ID}} {{.Status}} {{.ExitCode}} {{json .Command}}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == 'first exited (3) 3 "sh -c exit 3"\n'
    inspected = run_pier(home, "inspect", "--format", "{{.Digest}} {{index .Config.config.Env 0}}", reference)
    assert inspected.returncode == 0, inspected.stderr
    assert (
        inspected.stdout
        == f"{index.digest} PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    bad = run_pier(home, "inspect", "--format", "{{.Digest", reference)
    assert bad.returncode == 1 and bad.stderr.startswith("pier: --format: '{{' at position 0 is never closed")
    assert run_pier(home, "rm", "first").returncode == 0
