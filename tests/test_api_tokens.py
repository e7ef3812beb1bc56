"""Token auth: pier's own token server (GET, OAuth2 POST, refresh), its bearer checks, forged tokens."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.tokens import key_id

from .auth_users import ACL, USERS, basic
from .helpers import push_blob, push_manifest, run_pier, write_htpasswd
from .images import build_image
from .servers import PierServer, serve_refused
from .tokens import write_signing_key

pytestmark = pytest.mark.backends("filesystem", "s3")


def get_token(server: PierServer, *scopes: str, auth: dict[str, str] | None = None, **query: str) -> dict:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("service", "pier"),
        *(("scope", s) for s in scopes),
        *query.items(),
    ]
    reply = httpx.get(f"{server.url}/auth/token", params=params, headers=auth or {})
    assert reply.status_code == 200, reply.text
    return reply.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def granted(answer: dict) -> list[dict]:
    return jwt.decode(answer["access_token"], options={"verify_signature": False})["access"]


@pytest.fixture(scope="module")
def tokened(tmp_path_factory):
    base = tmp_path_factory.mktemp("tokens")
    htpasswd = write_htpasswd(base / "htpasswd", USERS)
    acl = base / "acl.toml"
    acl.write_text(ACL)
    key, _ = write_signing_key(base / "keys")
    server = PierServer(
        base / "data", "--htpasswd", str(htpasswd), "--acl", str(acl), "--token-key", str(key)
    ).start()
    image = build_image(base / "image", "v1")
    for repo in ("alice/private", "public/tools"):
        token = get_token(server, f"repository:{repo}:pull,push", auth=basic("alice", "wonderland"))
        for blob in image.blobs:
            push_blob(server.url, repo, blob, bearer(token["token"]))
        push_manifest(server.url, repo, "v1", image.manifest, bearer(token["token"]))
    yield server, image, key, htpasswd
    server.stop()


def test_requests_without_a_token_get_a_bearer_challenge(tokened) -> None:
    server, *_ = tokened
    base = httpx.get(f"{server.url}/v2/")
    assert base.status_code == 401
    assert base.headers["www-authenticate"] == (
        f'Bearer realm="http://{server.host}/auth/token",service="pier"'
    )
    manifest = httpx.get(f"{server.url}/v2/alice/private/manifests/v1")
    assert manifest.status_code == 401
    assert 'scope="repository:alice/private:pull"' in manifest.headers["www-authenticate"]
    push = httpx.post(f"{server.url}/v2/alice/private/blobs/uploads/")
    assert 'scope="repository:alice/private:pull,push"' in push.headers["www-authenticate"]


def test_a_basic_header_is_not_a_token(tokened) -> None:
    server, *_ = tokened
    reply = httpx.get(f"{server.url}/v2/", headers=basic("alice", "wonderland"))
    assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer ")


def test_grants_are_what_was_asked_narrowed_by_the_acl(tokened) -> None:
    server, *_ = tokened
    anonymous = get_token(server, "repository:public/tools:pull,push", "repository:alice/private:pull")
    assert granted(anonymous) == [{"type": "repository", "name": "public/tools", "actions": ["pull"]}]
    assert anonymous["scope"] == "repository:public/tools:pull"
    bob = get_token(server, "repository:alice/private:pull repository:bob/x:*", auth=basic("bob", "builder"))
    assert granted(bob) == [{"type": "repository", "name": "bob/x", "actions": ["pull", "push", "delete"]}]
    hostile = get_token(
        server, "repository:../etc:pull", "repository:a:b:c", "nonsense", auth=basic("bob", "builder")
    )
    assert granted(hostile) == []


def test_a_token_opens_exactly_what_it_grants(tokened) -> None:
    server, *_ = tokened
    token = get_token(server, "repository:public/tools:pull")["token"]
    assert httpx.get(f"{server.url}/v2/public/tools/manifests/v1", headers=bearer(token)).status_code == 200
    assert httpx.get(f"{server.url}/v2/", headers=bearer(token)).status_code == 200
    # Not granted: the same 401 whether the repository exists or not, naming the scope to ask for.
    answers = [
        httpx.get(f"{server.url}/v2/{repo}/manifests/v1", headers=bearer(token))
        for repo in ("alice/private", "alice/nothing-here")
    ]
    for reply, repo in zip(answers, ("alice/private", "alice/nothing-here"), strict=True):
        assert reply.status_code == 401
        assert reply.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert (
            f'scope="repository:{repo}:pull",error="insufficient_scope"' in reply.headers["www-authenticate"]
        )
    assert answers[0].json() == answers[1].json()
    push = httpx.post(f"{server.url}/v2/public/tools/blobs/uploads/", headers=bearer(token))
    assert push.status_code == 401


def test_bad_credentials_are_refused_and_never_echoed(tokened) -> None:
    server, *_ = tokened
    reply = httpx.get(
        f"{server.url}/auth/token",
        params={"service": "pier", "scope": "repository:alice/private:pull"},
        headers=basic("alice", "s3cret-guess"),
    )
    assert reply.status_code == 401
    assert "s3cret-guess" not in reply.text and reply.headers["www-authenticate"].startswith("Basic ")
    wrong_service = httpx.get(f"{server.url}/auth/token", params={"service": "elsewhere"})
    assert wrong_service.status_code == 400
    assert "s3cret-guess" not in server.log()


def test_catalog_needs_the_catalog_scope_and_shows_only_what_the_caller_may_pull(tokened) -> None:
    server, *_ = tokened
    anonymous = get_token(server, "registry:catalog:*")
    assert granted(anonymous) == []
    refused = httpx.get(f"{server.url}/v2/_catalog", headers=bearer(anonymous["token"]))
    assert refused.status_code == 401 and 'scope="registry:catalog:*"' in refused.headers["www-authenticate"]
    for user, visible in (("alice", ["alice/private", "public/tools"]), ("bob", ["public/tools"])):
        token = get_token(server, "registry:catalog:*", auth=basic(user, USERS[user]))["token"]
        listing = httpx.get(f"{server.url}/v2/_catalog", headers=bearer(token))
        assert listing.json()["repositories"] == visible


def test_oauth2_password_and_refresh_grants(tokened) -> None:
    server, *_ = tokened
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": "wonderland",
        "service": "pier",
        "client_id": "pier-tests",
        "access_type": "offline",
        "scope": "repository:alice/private:pull",
    }
    answer = httpx.post(f"{server.url}/auth/token", data=form).json()
    assert answer["scope"] == "repository:alice/private:pull" and answer["expires_in"] == 300
    assert "refresh_token" in answer
    access = httpx.get(f"{server.url}/v2/alice/private/manifests/v1", headers=bearer(answer["access_token"]))
    assert access.status_code == 200
    # A refresh token is not an access token.
    misuse = httpx.get(f"{server.url}/v2/alice/private/manifests/v1", headers=bearer(answer["refresh_token"]))
    assert misuse.status_code == 401 and 'error="invalid_token"' in misuse.headers["www-authenticate"]

    refreshed = httpx.post(
        f"{server.url}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": answer["refresh_token"],
            "service": "pier",
            "client_id": "pier-tests",
            "scope": "repository:alice/private:pull,push repository:bob/x:pull",
        },
    ).json()
    assert refreshed["scope"] == "repository:alice/private:pull,push"
    assert jwt.decode(refreshed["access_token"], options={"verify_signature": False})["sub"] == "alice"

    for bad, error in (
        ({**form, "password": "nope"}, "invalid_grant"),
        ({**form, "client_id": ""}, "invalid_request"),
        ({**form, "grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "x.y.z", "client_id": "c"}, "invalid_grant"),
    ):
        reply = httpx.post(f"{server.url}/auth/token", data=bad)
        assert reply.status_code == 400 and reply.json()["error"] == error
        assert "nope" not in reply.text


def test_get_offline_token_and_revocation_by_password_change(tokened, tmp_path) -> None:
    server, _, _, htpasswd = tokened
    answer = get_token(server, auth=basic("bob", "builder"), offline_token="true", client_id="tests")
    refresh = answer["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "tests", "service": "pier"}
    assert httpx.post(f"{server.url}/auth/token", data=form).status_code == 200
    original = htpasswd.read_text()
    try:
        write_htpasswd(htpasswd, {**USERS, "bob": "a new password"})
        reply = httpx.post(f"{server.url}/auth/token", data=form)
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"
    finally:
        htpasswd.write_text(original)
    anonymous = get_token(server, offline_token="true", client_id="tests")
    assert "refresh_token" not in anonymous  # nobody to refresh for


def _forge(server: PierServer, key_path, **changes) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = int(time.time())
    claims = {
        "iss": "pier",
        "aud": "pier",
        "sub": "mallory",
        "exp": now + 300,
        "iat": now,
        "access": [{"type": "repository", "name": "alice/private", "actions": ["pull"]}],
    }
    claims.update(changes.pop("claims", {}))
    signer = changes.pop("signer", key)
    headers = {"kid": key_id(key.public_key()), **changes.pop("headers", {})}
    return jwt.encode(claims, signer, algorithm=changes.pop("algorithm", "ES256"), headers=headers)


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["name"] = "public/tools"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_forged_tokens_are_refused(tokened) -> None:
    server, _, key_path, _ = tokened
    url = f"{server.url}/v2/alice/private/manifests/v1"
    genuine = _forge(server, key_path)
    assert httpx.get(url, headers=bearer(genuine)).status_code == 200  # the forger's baseline is right

    public_pem = (
        serialization.load_pem_private_key(key_path.read_bytes(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    unsigned = header + "." + genuine.split(".")[1] + "."
    forgeries = {
        "another key, same kid": _forge(server, key_path, signer=ec.generate_private_key(ec.SECP256R1())),
        "alg none": unsigned,
        "HS256 with the public key as secret": _hs256(genuine, public_pem),
        "expired": _forge(server, key_path, claims={"exp": int(time.time()) - 120}),
        "not yet valid": _forge(server, key_path, claims={"nbf": int(time.time()) + 600}),
        "another audience": _forge(server, key_path, claims={"aud": "some-other-registry"}),
        "another issuer": _forge(server, key_path, claims={"iss": "evil"}),
        "no expiry": _forge(server, key_path, claims={"exp": None}),
        "tampered payload": _tamper(genuine),
        "malformed access": _forge(server, key_path, claims={"access": "everything"}),
        "garbage": "a.b.c",
        "huge": "x" * 20000,
    }
    for what, token in forgeries.items():
        reply = httpx.get(url, headers=bearer(token))
        assert reply.status_code == 401, what
        assert 'error="invalid_token"' in reply.headers["www-authenticate"], what


def _hs256(genuine: str, secret: bytes) -> str:
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    payload = genuine.split(".")[1]
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}." + base64.urlsafe_b64encode(signature).decode().rstrip("=")


def test_hostile_token_requests(tokened) -> None:
    server, *_ = tokened
    many = httpx.get(
        f"{server.url}/auth/token", params=[("scope", f"repository:r{i}:pull") for i in range(40)]
    )
    assert many.status_code == 400
    huge = httpx.post(f"{server.url}/auth/token", content=b"a" * (128 * 1024))
    assert huge.status_code == 413
    wrong_method = httpx.put(f"{server.url}/auth/token")
    assert wrong_method.status_code == 405


def test_rsa_keys_sign_too(start_registry, tmp_path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", USERS)
    key, _ = write_signing_key(tmp_path / "keys", "rsa")
    server = start_registry("--htpasswd", str(htpasswd), "--token-key", str(key))
    answer = get_token(server, "repository:alice/x:pull", auth=basic("alice", "wonderland"))
    assert jwt.get_unverified_header(answer["token"])["alg"] == "RS256"
    reply = httpx.get(f"{server.url}/v2/alice/x/tags/list", headers=bearer(answer["token"]))
    assert reply.status_code == 404  # authorized, and the repository does not exist


@pytest.mark.slow  # the pier CLI as a process per step
def test_pier_client_logs_in_pushes_and_pulls_with_tokens(tokened, tmp_path) -> None:
    server, *_ = tokened

    def pier(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_pier(
            tmp_path / "home", *args, env={"DOCKER_CONFIG": str(tmp_path / "docker")}, stdin=stdin
        )

    assert pier("pull", "-q", f"{server.host}/public/tools:v1").returncode == 0  # anonymous token
    wrong = pier("login", server.host, "-u", "bob", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert pier("login", server.host, "-u", "bob", "--password-stdin", stdin="builder\n").returncode == 0
    assert pier("tag", f"{server.host}/public/tools:v1", f"{server.host}/bob/tools:v1").returncode == 0
    pushed = pier("push", f"{server.host}/bob/tools:v1")
    assert pushed.returncode == 0, pushed.stderr
    assert pier("rmi", f"{server.host}/bob/tools:v1").returncode == 0
    assert pier("pull", "-q", f"{server.host}/bob/tools:v1").returncode == 0
    assert pier("tag", f"{server.host}/public/tools:v1", f"{server.host}/alice/stolen:v1").returncode == 0
    refused = pier("push", f"{server.host}/alice/stolen:v1")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--token-only", "true"], "needs token_key"),
        (["--auth", "token"], "needs token_key"),
        (["--auth", "token", "--token-trust", "CERT"], "needs token_realm"),
        (["--token-trust", "/nonexistent.pem", "--token-realm", "http://t/token"], "token_trust"),
        (["--token-trust", "HTPASSWD", "--token-realm", "http://t/token"], "no PEM certificate"),
        (["--auth", "kerberos"], "auth must be one of"),
        (["--token-key", "/etc/hostname", "--htpasswd", "HTPASSWD"], "not a usable PEM private key"),
        (["--token-key", "KEY"], "needs htpasswd"),
    ],
)
def test_inconsistent_auth_settings_stop_serve_with_one_line(tmp_path, args, message) -> None:
    key, cert = write_signing_key(tmp_path / "keys")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", USERS)
    files = {"HTPASSWD": str(htpasswd), "KEY": str(key), "CERT": str(cert)}
    args = [files.get(a, a) for a in args]
    result = serve_refused(tmp_path / "d", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # the pier CLI as a process per step
def test_pier_client_uses_a_docker_identity_token(tokened, tmp_path) -> None:
    """docker stores a refresh token as "identitytoken"; pier redeems it with the OAuth2 refresh grant."""
    server, *_ = tokened
    refresh = get_token(server, auth=basic("alice", "wonderland"), offline_token="true", client_id="docker")
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(b"alice:").decode()
    entry = {"auth": auth, "identitytoken": refresh["refresh_token"]}
    (docker / "config.json").write_text(json.dumps({"auths": {server.host: entry}}))
    pulled = run_pier(
        tmp_path / "home", "pull", "-q", f"{server.host}/alice/private:v1", env={"DOCKER_CONFIG": str(docker)}
    )
    assert pulled.returncode == 0, pulled.stderr

    entry["identitytoken"] = "not.a.token"
    (docker / "config.json").write_text(json.dumps({"auths": {server.host: entry}}))
    refused = run_pier(
        tmp_path / "home2",
        "pull",
        "-q",
        f"{server.host}/alice/private:v1",
        env={"DOCKER_CONFIG": str(docker)},
    )
    assert refused.returncode == 1 and "invalid_grant" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_no_refresh_token_for_a_removed_user_and_long_passwords_are_no_crash(tokened) -> None:
    server, _, _, htpasswd = tokened
    assert get_token(server, auth=basic("bob", "builder")).get("token")  # bob's login is now cached
    original = htpasswd.read_text()
    try:
        write_htpasswd(htpasswd, {"alice": USERS["alice"]})
        reply = httpx.get(
            f"{server.url}/auth/token",
            params={"service": "pier", "offline_token": "true", "client_id": "t"},
            headers=basic("bob", "builder"),
        )
        # Refused: the login is either checked against the new file already (401) or still
        # remembered for up to a second, with no password left to bind a refresh token to (400).
        assert (reply.status_code, reply.json()["error"]) in ((400, "invalid_grant"), (401, "invalid_client"))
    finally:
        htpasswd.write_text(original)
    long = httpx.post(
        f"{server.url}/auth/token",
        data={"grant_type": "password", "username": "alice", "password": "a" * 100, "client_id": "t"},
    )
    assert long.status_code == 400 and long.json()["error"] == "invalid_grant"
