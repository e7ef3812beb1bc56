"""Token auth across implementations: distribution trusting pier's token server, pier trusting others."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.tokens import key_id

from .auth_users import ACL, USERS
from .helpers import run_pier, write_htpasswd
from .images import build_image
from .servers import PierServer, free_port, run_distribution
from .skopeo import COPY_FLAGS, Skopeo
from .tokens import ISSUER, SERVICE, TokenService, distribution_token_config, write_signing_key

pytestmark = pytest.mark.slow  # distribution and skopeo against pier's tokens


def _skopeo(tmp_path, server: PierServer | None = None) -> Skopeo:
    executable = shutil.which("skopeo")
    if executable is None:
        pytest.fail("skopeo is not installed (Debian: apt-get install skopeo)")
    home = tmp_path / "skopeo-home"
    home.mkdir()
    return Skopeo(executable, home, server)


@pytest.fixture
def distribution_behind_pier_tokens(tmp_path):
    """distribution with ``auth: token``, trusting the certificate of pier's token-signing key."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", USERS)
    acl = tmp_path / "acl.toml"
    acl.write_text(ACL)
    key, cert = write_signing_key(tmp_path / "keys")
    tokens = PierServer(
        tmp_path / "tokens-data",
        "--token-only",
        "true",
        "--htpasswd",
        str(htpasswd),
        "--acl",
        str(acl),
        "--token-key",
        str(key),
        "--token-service",
        "distribution",
        "--token-issuer",
        "pier-tokens",
    )
    tokens.start()
    port = free_port()
    config = tmp_path / "distribution.yml"
    config.write_text(
        distribution_token_config(
            tmp_path / "distribution",
            port,
            f"{tokens.url}/auth/token",
            cert,
            service="distribution",
            issuer="pier-tokens",
        )
    )
    try:
        with run_distribution(config, port) as host:
            yield host, tokens
    finally:
        tokens.stop()


def test_distribution_accepts_tokens_from_pier_token_server(
    distribution_behind_pier_tokens, tmp_path
) -> None:
    host, tokens = distribution_behind_pier_tokens
    assert httpx.get(f"{tokens.url}/v2/").status_code == 404  # token-only: no registry here
    challenge = httpx.get(f"http://{host}/v2/").headers["www-authenticate"]
    assert f'realm="{tokens.url}/auth/token"' in challenge

    image = build_image(tmp_path / "image", "v1")
    skopeo = _skopeo(tmp_path)
    skopeo.run(
        "copy", *COPY_FLAGS, "--dest-tls-verify=false", "--dest-creds", "bob:builder",
        f"oci:{image.layout}:v1", f"docker://{host}/bob/tools:v1",
    )  # fmt: skip
    refused = skopeo.run(
        "copy", *COPY_FLAGS, "--dest-tls-verify=false", "--dest-creds", "bob:builder",
        f"oci:{image.layout}:v1", f"docker://{host}/alice/tools:v1", check=False,
    )  # fmt: skip
    assert refused.returncode != 0  # the ACL on pier's side said no; distribution enforced it

    def pier(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
        return run_pier(tmp_path / "home", *args, env=env, stdin=stdin)

    anonymous = pier("pull", "-q", f"{host}/bob/tools:v1")
    assert anonymous.returncode == 1 and "Traceback" not in anonymous.stderr
    login = pier("login", host, "-u", "bob", "--password-stdin", stdin="builder\n")
    assert login.returncode == 0, login.stderr
    pulled = pier("pull", "-q", f"{host}/bob/tools:v1")
    assert pulled.returncode == 0, pulled.stderr
    assert pier("tag", f"{host}/bob/tools:v1", f"{host}/bob/copy:v1").returncode == 0
    pushed = pier("push", f"{host}/bob/copy:v1")
    assert pushed.returncode == 0, pushed.stderr
    assert pier("tag", f"{host}/bob/tools:v1", f"{host}/alice/stolen:v1").returncode == 0
    stolen = pier("push", f"{host}/alice/stolen:v1")
    assert stolen.returncode == 1 and len(stolen.stderr.strip().splitlines()) == 1


@pytest.fixture
def pier_behind_external_tokens(tmp_path):
    """pier with ``auth: token`` trusting an issuer it does not run: the test's token service
    (x5c-signed tokens) and a second key given as a certificate (kid-signed tokens)."""
    (tmp_path / "issuer").mkdir()
    external = TokenService(tmp_path / "issuer", users={"alice": "wonderland"}).start()
    key, cert = write_signing_key(tmp_path / "keys")
    server = PierServer(
        tmp_path / "data",
        "--token-trust",
        f"{external.bundle},{cert}",
        "--token-realm",
        external.realm,
        "--token-issuer",
        ISSUER,
        "--token-service",
        SERVICE,
    ).start()
    try:
        yield server, external, key
    finally:
        server.stop()
        external.stop()


def test_pier_accepts_tokens_from_an_external_issuer(pier_behind_external_tokens, tmp_path) -> None:
    server, external, key_path = pier_behind_external_tokens
    challenge = httpx.get(f"{server.url}/v2/").headers["www-authenticate"]
    assert challenge == f'Bearer realm="{external.realm}",service="{SERVICE}"'

    image = build_image(tmp_path / "image", "v1")
    skopeo = _skopeo(tmp_path, server)
    skopeo.run(
        "copy", *COPY_FLAGS, "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
        f"oci:{image.layout}:v1", f"docker://{server.host}/alice/app:v1",
    )  # fmt: skip
    assert any("repository:alice/app:pull,push" in r["scopes"] for r in external.requests)

    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    login = run_pier(
        tmp_path / "home",
        "login",
        server.host,
        "-u",
        "alice",
        "--password-stdin",
        env=env,
        stdin="wonderland\n",
    )
    assert login.returncode == 0, login.stderr
    pulled = run_pier(tmp_path / "home", "pull", "-q", f"{server.host}/alice/app:v1", env=env)
    assert pulled.returncode == 0, pulled.stderr

    url = f"{server.url}/v2/alice/app/manifests/v1"
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": SERVICE, "sub": "ci", "exp": now + 60, "iat": now,
        "access": [{"type": "repository", "name": "alice/app", "actions": ["pull"]}],
    }  # fmt: skip
    by_kid = jwt.encode(claims, key, algorithm="ES256", headers={"kid": key_id(key.public_key())})
    assert httpx.get(url, headers={"Authorization": f"Bearer {by_kid}"}).status_code == 200

    (tmp_path / "stranger").mkdir()
    stranger = TokenService(tmp_path / "stranger")  # a valid x5c chain, from a certificate not trusted
    untrusted = stranger.issue("alice", ["repository:alice/app:pull"])
    reply = httpx.get(url, headers={"Authorization": f"Bearer {untrusted}"})
    assert reply.status_code == 401 and 'error="invalid_token"' in reply.headers["www-authenticate"]
    stranger._server.server_close()  # never started: nothing to shut down
