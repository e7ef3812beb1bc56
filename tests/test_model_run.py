"""Models mounted into containers (`pier run --mount type=image` and `-v REF:/path:ro`) under runc."""

from __future__ import annotations

import json

import pytest

from .helpers import push_blob, push_manifest, run_pier
from .images import build_image
from .models import make_model

pytestmark = pytest.mark.slow  # runc containers


@pytest.fixture
def image_ref(registry, tmp_path) -> str:
    image = build_image(tmp_path / "layout", "v1", cmd=["sh"], env=["PATH=/bin"])
    for blob in image.blobs:
        push_blob(registry.url, "client/model-runner", blob)
    push_manifest(registry.url, "client/model-runner", "v1", image.manifest)
    return f"{registry.host}/client/model-runner:v1"


def layer_directories(home) -> set[str]:
    return {p.name for p in (home / "layers").iterdir() if not p.name.startswith(".")}


def test_a_model_is_mounted_read_only_and_stored_once(registry, image_ref, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=1 << 20)
    reference = f"{registry.host}/models/mounted:v1"
    assert (
        run_pier(tmp_path / "push-home", "model", "push", reference, str(model), "--group", "data").returncode
        == 0
    )
    home = tmp_path / "home"

    listed = run_pier(
        home,
        "run",
        "--rm",
        "-v",
        f"{reference}:/models:ro",
        image_ref,
        "sh",
        "-c",
        "cd /models && find . -type f | sort && cat config.json",
    )
    assert listed.returncode == 0, listed.stderr
    files = sorted("./" + p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    assert listed.stdout.splitlines() == [*files, (model / "config.json").read_text()]
    after_first = layer_directories(home)

    mount = f"type=image,source={reference},target=/weights"
    script = "cmp /weights/model-00001.safetensors /weights/model-00001.safetensors && echo x > /weights/new"
    written = run_pier(home, "run", "--rm", "--mount", mount, image_ref, "sh", "-c", script)
    assert written.returncode != 0 and "Read-only file system" in written.stderr + written.stdout
    assert layer_directories(home) == after_first  # the second container used the same directories
    assert not (tmp_path / "model" / "new").exists()

    # The files are kept while the model is tagged, and freed with it.
    assert run_pier(home, "prune").returncode == 0
    assert layer_directories(home) == after_first
    listed = run_pier(home, "model", "ls", "-q")
    assert listed.stdout.split() == [f"{registry.host}/models/mounted:v1"]
    assert run_pier(home, "rmi", reference).returncode == 0
    assert run_pier(home, "prune").returncode == 0
    image_layers = json.loads(run_pier(home, "inspect", image_ref).stdout)["Config"]["rootfs"]["diff_ids"]
    assert len(layer_directories(home)) == len(image_layers)


def test_a_pulled_model_mounts_without_the_registry_and_bad_mounts_are_refused(
    registry, image_ref, tmp_path
) -> None:
    model = make_model(tmp_path / "model", weight_size=1000)
    reference = f"{registry.host}/models/offline:v1"
    home = tmp_path / "home"
    assert run_pier(home, "model", "push", reference, str(model)).returncode == 0
    assert run_pier(home, "pull", image_ref).returncode == 0
    pulled = run_pier(home, "model", "pull", reference)  # no DIR: into the local store, for mounting
    assert pulled.returncode == 0 and "ready to mount" in pulled.stdout, pulled.stderr

    offline = {"PIER_INSECURE_REGISTRIES": ""}
    moved = reference.replace(registry.host, "127.0.0.1:1")  # nothing listens there
    assert run_pier(home, "tag", reference, moved).returncode == 0
    shown = run_pier(home, "run", "--rm", "-v", f"{moved}:/m", image_ref, "cat", "/m/README.md", env=offline)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (model / "README.md").read_text()

    for flags, message in (
        (["-v", f"{reference}:/m:rw"], "read-only"),
        (["-v", "data/models:/m"], "with its tag or digest"),  # a host path without ./, not docker.io
        (["--mount", f"type=bind,source={reference},target=/m"], "only type=image"),
        (["--mount", f"type=image,source={reference}"], "absolute target"),
        (["--mount", f"type=image,source={reference},target=/m,colour=red"], "unknown option"),
    ):
        refused = run_pier(home, "run", "--rm", *flags, image_ref, "true")
        assert refused.returncode == 1 and message in refused.stderr, (flags, refused.stderr)
