"""Models pier pushes, read by tools no one here wrote (skopeo, the oras Python SDK, distribution),
and a ModelPack artifact another tool pushed, read by pier."""

from __future__ import annotations

import json
import os

import httpx
import oras.client
import pytest

from .helpers import run_pier
from .models import make_model, tree

pytestmark = pytest.mark.slow  # skopeo, distribution and the pier CLI as processes


def test_skopeo_copies_a_pier_model_and_pier_pulls_the_copy(registry, skopeo, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=1 << 20)
    home = tmp_path / "home"
    pushed = run_pier(
        home, "model", "push", "-q", f"{registry.host}/interop/model:v1", str(model), "--group", "data"
    )
    assert pushed.returncode == 0, pushed.stderr
    layout = tmp_path / "layout"
    skopeo.pull("interop/model", "v1", layout)
    skopeo.push(layout, "v1", "interop/model-copy")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pushed.stdout.strip()  # a byte-exact copy
    out = tmp_path / "out"
    pulled = run_pier(tmp_path / "home2", "model", "pull", f"{registry.host}/interop/model-copy:v1", str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)


def test_the_oras_sdk_lists_and_pulls_a_pier_model(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=1 << 20)
    reference = f"{registry.host}/interop/oras-reads:v1"
    assert run_pier(tmp_path / "home", "model", "push", reference, str(model)).returncode == 0
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    manifest = client.get_manifest(reference)
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    titles = sorted(layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"])
    out = tmp_path / "oras-out"
    client.pull(target=reference, outdir=str(out))
    expected = tree(model)
    assert sorted(tree(out)) == titles == sorted(expected)  # no --group: one layer per file
    assert {p: v[0] for p, v in tree(out).items()} == {p: v[0] for p, v in expected.items()}


def test_pier_pulls_a_modelpack_artifact_the_oras_sdk_pushed(registry, tmp_path, monkeypatch) -> None:
    source = tmp_path / "source"
    source.mkdir()
    weights = os.urandom(200_000)
    (source / "model.gguf").write_bytes(weights)
    (source / "tokenizer.json").write_text('{"v": 1}')
    config = {
        "descriptor": {"name": "from-oras"},
        "modelfs": {"type": "layers", "diffIds": []},
        "config": {"format": "gguf"},
    }
    (source / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(source)  # oras names each layer by the path it is given
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    reference = f"{registry.host}/interop/oras-wrote:v1"
    response = client.push(
        target=reference,
        files=[
            "model.gguf:application/vnd.cncf.model.weight.v1.raw",
            "tokenizer.json:application/vnd.cncf.model.weight.config.v1.raw",
        ],
        manifest_config="config.json:application/vnd.cncf.model.config.v1+json",
    )
    assert response.status_code == 201
    home = tmp_path / "home"
    out = tmp_path / "out"
    pulled = run_pier(home, "model", "pull", "--include", "*.gguf", reference, str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == {"model.gguf": (weights, 0o644)}
    inspected = json.loads(run_pier(home, "model", "inspect", "--json", reference).stdout)
    assert inspected["Descriptor"] == {"name": "from-oras"} and inspected["Config"] == {"format": "gguf"}


def test_a_model_round_trips_through_the_reference_registry(distribution, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=1 << 20)
    reference = f"{distribution}/interop/model:v1"
    home = tmp_path / "home"
    pushed = run_pier(home, "model", "push", reference, str(model), "--group", "data")
    assert pushed.returncode == 0, pushed.stderr
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    served = httpx.get(f"http://{distribution}/v2/interop/model/manifests/v1", headers=accept).json()
    assert served["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    out = tmp_path / "out"
    pulled = run_pier(tmp_path / "home2", "model", "pull", reference, str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)
