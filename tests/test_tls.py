"""HTTPS: pier serves with --tls-cert/--tls-key; the client verifies against a CA it is given."""

from __future__ import annotations

import ssl
import subprocess

import httpx
import pytest

from .helpers import push_blob, push_manifest, run_pier
from .images import build_image
from .servers import serve_refused
from .tls import make_certificates

pytestmark = pytest.mark.slow  # certificates and the pier CLI as a process


@pytest.fixture
def tls_registry(start_registry, tmp_path):
    certificates = make_certificates(tmp_path / "pki")
    server = start_registry("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key))
    image = build_image(tmp_path / "image", "v1")
    trusted = ssl.create_default_context(cafile=str(certificates.ca))
    with httpx.Client(verify=trusted) as http:
        assert http.get(f"{server.url}/v2/").status_code == 200  # really HTTPS, with our CA
    for blob in image.blobs:
        push_blob(server.url, "secure/app", blob, verify=trusted)
    push_manifest(server.url, "secure/app", "v1", image.manifest, verify=trusted)
    return server, certificates, image


def pier(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_pier(tmp_path / "home", *args, env=env)


def test_the_client_verifies_the_registry_certificate(tls_registry, tmp_path) -> None:
    server, certificates, image = tls_registry
    reference = f"{server.host}/secure/app:v1"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/")  # an unknown CA is refused, also by plain httpx

    flagged = pier(tmp_path, "pull", "-q", "--ca-cert", str(certificates.ca), reference)
    assert flagged.returncode == 0, flagged.stderr
    assert flagged.stdout.strip() == image.digest

    certs_d = tmp_path / "certs.d" / server.host
    certs_d.mkdir(parents=True)
    (certs_d / "ca.crt").write_bytes(certificates.ca.read_bytes())
    docker_layout = pier(
        tmp_path / "second", "pull", "-q", reference, env={"PIER_CERTS_DIR": str(tmp_path / "certs.d")}
    )
    assert docker_layout.returncode == 0, docker_layout.stderr


def test_a_certificate_from_an_unknown_ca_is_refused(tls_registry, tmp_path) -> None:
    server, _, _ = tls_registry
    other = make_certificates(tmp_path / "other-pki")
    refused = pier(tmp_path, "pull", "-q", "--ca-cert", str(other.ca), f"{server.host}/secure/app:v1")
    assert refused.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and "Traceback" not in refused.stderr


def test_serve_refuses_half_or_broken_tls_settings(tmp_path) -> None:
    certificates = make_certificates(tmp_path / "pki")
    for args, message in (
        (["--tls-cert", str(certificates.cert)], "go together"),
        (["--tls-cert", str(certificates.key), "--tls-key", str(certificates.key)], "unusable"),
    ):
        result = serve_refused(tmp_path / "d", *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
