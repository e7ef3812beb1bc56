"""deploy/: the image, compose, Kubernetes and systemd files, each checked by the real tool.

- The image: deploy/Dockerfile built by buildah with no network (base and wheels prepared
  beforehand, see tests/deploy_image.py), copied into a running pier by skopeo, pulled back
  by ``pier pull`` and started by ``pier run``: pier serving its own image.
- compose: ``docker-compose config`` (1.29), and deploy/compose/nginx.conf run by nginx
  in front of two pier replicas on SeaweedFS, with the bucket made by its create-bucket.py.
- Kubernetes: ``kubernetes-validate --strict`` against KUBERNETES_VERSION, offline.
- systemd: ``systemd-analyze verify`` and ``security --offline``; no systemd runs here
  (PID 1 is not systemd), so the unit's in-process rules (syscall filter, address
  families, MemoryDenyWriteExecute) are applied by tests/deploy_sandbox.py to a pier
  doing real work.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
import yaml

from registry.config import Settings, load_settings

from .deploy_image import (
    BASE_IMAGE,
    Buildah,
    Timings,
    download_debs,
    make_rootfs,
    need,
    python_packages,
    remove_tree,
    run,
    start_wheel_download,
)
from .deploy_sandbox import sandboxed
from .helpers import push_blob, push_manifest, run_pier, wait_until, write_htpasswd
from .images import Blob, build_image, sha256
from .servers import REPO_ROOT, PierServer, free_port, stop_process, wait_http
from .storeview import S3Storage
from .tls import make_certificates
from .tokens import write_signing_key

pytestmark = pytest.mark.slow  # builds the image, runs nginx, systemd-analyze and the Kubernetes tools

DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the version the manifests are validated against (README says so too)
IMAGE_UID = 10001
SETTING_NAMES = {name.upper() for name in Settings.__dataclass_fields__}


def pier_variables(env: dict[str, str]) -> dict[str, str]:
    """The PIER_* variables of an environment, each checked to be a setting pier knows."""
    variables = {k: str(v) for k, v in env.items() if k.startswith("PIER_")}
    unknown = {k for k in variables if k != "PIER_CONFIG" and k.removeprefix("PIER_") not in SETTING_NAMES}
    assert not unknown, f"pier has no such settings: {sorted(unknown)}"
    load_settings(environ={k: v for k, v in variables.items() if k != "PIER_CONFIG"})  # values parse
    return variables


# -- the image ----------------------------------------------------------------------------------
def test_image_builds_offline_and_pier_serves_its_own_image(registry, skopeo, tmp_path: Path) -> None:
    runc = need("runc", "runc")
    need("dpkg-deb", "dpkg")
    timings = Timings()
    wheels = tmp_path / "wheels"
    download = start_wheel_download(wheels, tmp_path / "pip.log")
    buildah = Buildah(tmp_path / "buildah")
    try:
        packages = python_packages()
        debs = download_debs(packages, tmp_path / "debs")
        timings.step(f"apt-get download: {len(debs)} .debs of Debian's python3-venv")
        make_rootfs(debs, tmp_path / "rootfs")
        timings.step("dpkg-deb: unpack them into a root filesystem, add busybox")
        buildah.build_base(tmp_path / "rootfs")
        timings.step(f"buildah: commit {BASE_IMAGE}")
        remove_tree(tmp_path / "rootfs")
        if download.wait(timeout=300) != 0:
            pytest.fail(f"pip download failed:\n{(tmp_path / 'pip.log').read_text()[-3000:]}")
        timings.step(f"pip download: {len(list(wheels.iterdir()))} wheels (ran alongside the base)")

        buildah(
            "bud",
            "--isolation=oci",
            f"--runtime={runc}",
            "--network=none",  # the proof that the build downloads nothing
            "--pull=never",
            "--format=docker",  # HEALTHCHECK exists in docker's image format only
            "--file",
            str(DEPLOY / "Dockerfile"),
            "--ignorefile",
            str(DEPLOY / "Dockerfile.dockerignore"),
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--build-arg",
            "PIP_OPTIONS=--no-index --find-links=/wheels",
            "--volume",
            f"{wheels}:/wheels:ro",
            "--tag",
            "localhost/pier:test",
            str(REPO_ROOT),
            timeout=600,
        )
        timings.step("buildah bud deploy/Dockerfile (no network)")
        assert build_context(buildah, tmp_path) == {
            "pyproject.toml",
            "README.md",
            "registry",
            "puller",
            "storage_backends",
            "oci",
            "deploy/pier.toml",
        }
        timings.step("buildah: what `COPY . /src` takes from the repository")
        config = json.loads(buildah("inspect", "--type", "image", "localhost/pier:test").stdout)["Docker"]
        config = config["config"]
        assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
        assert config["ExposedPorts"] == {"5000/tcp": {}}
        assert config["Volumes"] == {"/var/lib/pier": {}}
        assert config["Cmd"] == ["pier", "serve"]
        assert "PIER_CONFIG=/etc/pier/pier.toml" in config["Env"]
        healthcheck = config["Healthcheck"]["Test"]
        assert healthcheck[0] == "CMD" and "http://127.0.0.1:5000/healthz" in healthcheck[-1]

        ref = f"{registry.host}/deploy/pier:test"
        skopeo.run(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"{buildah.transport}localhost/pier:test",
            f"docker://{ref}",
        )
        timings.step("skopeo copy: buildah's storage -> pier")
    finally:
        if download.poll() is None:
            stop_process(download)
        buildah.remove_storage()
        for folder in ("debs", "rootfs", "wheels"):
            remove_tree(tmp_path / folder)

    try:
        run_the_image(tmp_path, ref, healthcheck, skopeo, timings)
    finally:
        for folder in ("home", "home-again", "data"):  # layers and unpacked trees: hundreds of MB
            remove_tree(tmp_path / folder)
    print(f"\nimage test steps:\n{timings.report()}")


def build_context(buildah: Buildah, tmp_path: Path) -> set[str]:
    """The files deploy/Dockerfile.dockerignore lets into the build: top-level names, and deploy/'s."""
    containerfile = tmp_path / "context-check.Dockerfile"
    containerfile.write_text(f"FROM {BASE_IMAGE}\nCOPY . /src\n")
    ignore = ("--ignorefile", str(DEPLOY / "Dockerfile.dockerignore"))
    buildah("bud", "--pull=never", *ignore, "--file", str(containerfile), "--tag", "context", str(REPO_ROOT))
    container = buildah("from", "--pull=never", "context").stdout.strip()
    src = Path(buildah("mount", container).stdout.strip()) / "src"
    names = {p.name for p in src.iterdir() if p.name != "deploy"}
    names |= {f"deploy/{p.name}" for p in (src / "deploy").iterdir()}
    buildah("umount", container)
    return names


def run_the_image(tmp_path: Path, ref: str, healthcheck: list[str], skopeo, timings: Timings) -> None:
    home = tmp_path / "home"
    pulled = run_pier(home, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    digest = re.search(r"Digest: (sha256:[0-9a-f]{64})", pulled.stdout)
    assert digest, pulled.stdout
    timings.step("pier pull")

    who = run_pier(
        home,
        "run",
        "--rm",
        ref,
        "python3",
        "-c",
        "import os, pwd; print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name,"
        " os.access('/var/lib/pier', os.W_OK), os.getcwd())",
    )
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID), "pier", "True", "/var/lib/pier"]
    timings.step("pier run: the image's user (the first run unpacks the layers)")

    # The image's own HEALTHCHECK command, in the image, with the image's default settings:
    # it fails while nothing listens, and passes once `pier serve` answers.
    probe = shlex.join(healthcheck[1:])
    script = (
        f"{probe} 2>/dev/null && exit 9; pier serve & i=0; "
        f"while [ $i -lt 200 ]; do {probe} 2>/dev/null && exit 0; i=$((i+1)); sleep 0.1; done; exit 1"
    )
    checked = run_pier(home, "run", "--rm", ref, "sh", "-c", script)
    assert checked.returncode == 0, (checked.returncode, checked.stderr[-2000:])
    timings.step("pier run: HEALTHCHECK fails before `pier serve`, passes after")

    serve_its_own_image(tmp_path, home, ref, digest.group(1), skopeo, timings)


def serve_its_own_image(tmp_path: Path, home: Path, ref: str, digest: str, skopeo, timings: Timings) -> None:
    """`pier run` the image's default command on the host's network, with a data volume."""
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)
    name = f"pier-deploy-test-{port}"
    log = tmp_path / "containerized-pier.log"
    argv = [sys.executable, "-m", "puller", "run", "--rm", "--network", "host", "--name", name]
    argv += ["-v", f"{data}:/var/lib/pier", "-e", f"PIER_ADDR=127.0.0.1:{port}", ref]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PIER_HOME": str(home)},
            cwd=REPO_ROOT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", process, timeout=60)
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/v2/").status_code == 200
        timings.step("pier run: the image's `pier serve` answers /healthz, /readyz, /v2/")

        state = json.loads(run(["runc", "state", name]).stdout)
        status = Path(f"/proc/{state['pid']}/status").read_text()
        assert re.search(rf"^Uid:\s+{IMAGE_UID}\s+{IMAGE_UID}\s+{IMAGE_UID}\s+{IMAGE_UID}$", status, re.M)
        assert re.search(rf"^Gid:\s+{IMAGE_UID}\s+", status, re.M)
        # The settings: /etc/pier/pier.toml's json logs, and PIER_ADDR over its addr.
        first = json.loads(log.read_text().splitlines()[0])
        assert first["level"] == "info", first

        own = f"127.0.0.1:{port}/pier/pier:self"
        skopeo.run(
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{ref}",
            f"docker://{own}",
        )
        again = run_pier(tmp_path / "home-again", "pull", own)
        assert again.returncode == 0, again.stderr
        assert f"Digest: {digest}" in again.stdout
        stored = list(data.rglob("*"))
        assert stored and {path.lstat().st_uid for path in stored} == {IMAGE_UID}
        timings.step("the containerized pier stores its own image (skopeo) and serves it (pier pull)")

        run(["runc", "kill", name, "TERM"])
        assert process.wait(timeout=45) == 0, log.read_text()[-3000:]
        timings.step("SIGTERM: the containerized pier stops cleanly, `pier run` exits 0")
    finally:
        if process.poll() is None:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
            stop_process(process)


# -- compose ------------------------------------------------------------------------------------
def compose_config(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    executable = need("docker-compose", "docker-compose")
    empty = tmp_path / "empty.env"  # never a developer's deploy/.env
    empty.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **variables}
    argv = [executable, "--env-file", str(empty), "-f", str(DEPLOY / "compose.yaml"), "config"]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False
    )


def test_compose_file_is_valid_and_has_the_production_topology(tmp_path: Path) -> None:
    result = compose_config(tmp_path, S3_ACCESS_KEY="key-from-env", S3_SECRET_KEY="secret-from-env")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"seaweedfs", "create-bucket", "pier-1", "pier-2", "mirror", "nginx"}

    replicas = [services["pier-1"], services["pier-2"]]
    assert replicas[0]["environment"] == replicas[1]["environment"]  # one store, one configuration
    env = pier_variables(replicas[0]["environment"])
    assert env["PIER_ROOT"] == "s3://pier/registry"
    assert env["PIER_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["PIER_HTPASSWD"] == "/run/secrets/htpasswd"
    assert env["PIER_UI_SESSION_KEY"] == "/run/secrets/ui-session-key"  # sessions valid on both
    assert all({s["source"] for s in r["secrets"]} >= {"htpasswd", "ui-session-key"} for r in replicas)
    assert replicas[0]["environment"]["AWS_SECRET_ACCESS_KEY"] == "secret-from-env"
    for service in (*replicas, services["mirror"]):
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(service["build"]["context"]) == REPO_ROOT
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["depends_on"] == {"create-bucket": {"condition": "service_completed_successfully"}}
        assert "ports" not in service  # reachable through nginx only
    mirror = pier_variables(services["mirror"]["environment"])
    assert mirror["PIER_PROXY"] == "https://registry-1.docker.io"
    assert mirror["PIER_ROOT"] == "s3://pier/mirror"

    seaweedfs = services["seaweedfs"]
    assert "-s3" in seaweedfs["command"] and "-s3.port=8333" in seaweedfs["command"]
    assert seaweedfs["environment"]["AWS_ACCESS_KEY_ID"] == "key-from-env"
    bucket = services["create-bucket"]
    assert bucket["command"] == ["python3", "/create-bucket.py", "pier"]
    assert f"{DEPLOY / 'compose/create-bucket.py'}:/create-bucket.py:ro" in bucket["volumes"]

    nginx = services["nginx"]
    assert f"{DEPLOY / 'compose/nginx.conf'}:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert {(p["published"], p["target"]) for p in nginx["ports"]} == {(443, 443), (8443, 8443)}
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == dict.fromkeys(
        ("pier-1", "pier-2", "mirror"), "service_healthy"
    )
    upstreams = re.findall(r"^\s*server (\S+):5000[ ;]", (DEPLOY / "compose/nginx.conf").read_text(), re.M)
    assert upstreams == ["pier-1", "pier-2", "mirror"]

    # The S3 keys are required variables (deploy/.env), never written in the file.
    missing = compose_config(tmp_path)
    assert missing.returncode != 0 and "S3_ACCESS_KEY" in missing.stderr


def test_nginx_conf_balances_replicas_on_s3_and_keeps_the_mirror_read_only(seaweed, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.fail("nginx is not installed (Debian: apt-get install nginx-light)")
    # The bucket, made by compose's own one-shot step (twice: it must be idempotent).
    bucket = f"deploy-{os.getpid()}-{free_port()}"
    step_env = {**os.environ, **seaweed.env}
    for expected in ("created", "ready"):
        made = subprocess.run(
            [sys.executable, str(DEPLOY / "compose/create-bucket.py"), bucket],
            capture_output=True,
            text=True,
            env=step_env,
            timeout=150,
            check=False,
        )
        assert made.returncode == 0 and f"bucket {bucket}: {expected}" in made.stdout, made.stderr

    certs = make_certificates(tmp_path / "tls")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    key, _ = write_signing_key(tmp_path / "keys")
    storage = S3Storage(f"s3://{bucket}/registry", seaweed.env, seaweed.client())
    auth = ("--htpasswd", str(htpasswd), "--token-key", str(key), "--access-log", "true")
    servers = [PierServer(tmp_path / f"replica{i}", *auth, storage=storage) for i in range(2)]
    servers.append(PierServer(tmp_path / "mirror"))  # any pier stands for the mirror here
    try:
        for server in servers:
            server.start()
        registry_port, mirror_port = free_port(), free_port()
        config = nginx_test_config(tmp_path, servers, registry_port, mirror_port, certs)
        tested = subprocess.run(
            [nginx, "-t", *config], capture_output=True, text=True, timeout=30, check=False
        )
        assert tested.returncode == 0 and "test is successful" in tested.stderr, tested.stderr
        process = subprocess.Popen([nginx, *config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"https://127.0.0.1:{registry_port}/v2/", process)
            check_through_nginx(tmp_path, servers, registry_port, mirror_port, certs.ca)
        finally:
            stop_process(process)
    finally:
        for server in servers:
            server.stop()


def nginx_test_config(tmp_path: Path, servers, registry_port: int, mirror_port: int, certs) -> list[str]:
    """deploy/compose/nginx.conf with compose's names and ports replaced by this test's, plus
    test-local log and temp paths; nothing else changes. Returns nginx's arguments."""
    text = (DEPLOY / "compose/nginx.conf").read_text()
    folder = tmp_path / "nginx"
    folder.mkdir()
    local = f"access_log {folder / 'access.log'}; error_log {folder / 'error.log'} warn;"
    local += "".join(f" {name}_temp_path {folder / name};" for name in ("client_body", "proxy", "fastcgi"))
    local += "".join(f" {name}_temp_path {folder / name};" for name in ("uwsgi", "scgi"))
    replacements = {
        "server pier-1:5000 ": f"server {servers[0].host} ",
        "server pier-2:5000 ": f"server {servers[1].host} ",
        "server mirror:5000;": f"server {servers[2].host};",
        "listen 443 ssl;": f"listen 127.0.0.1:{registry_port} ssl;",
        "listen 8443 ssl;": f"listen 127.0.0.1:{mirror_port} ssl;",
        "/run/secrets/tls.crt": str(certs.cert),
        "/run/secrets/tls.key": str(certs.key),
        "http {\n": f"http {{\n    {local}\n",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/compose/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    config = folder / "nginx.conf"
    config.write_text(text)
    settings = (
        f"daemon off; user root root; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} warn;"
    )
    return ["-c", str(config), "-p", str(folder), "-g", settings]


def check_through_nginx(tmp_path: Path, servers, registry_port: int, mirror_port: int, ca: Path) -> None:
    trust = ssl.create_default_context(cafile=str(ca))
    front = f"https://127.0.0.1:{registry_port}"
    # Host and X-Forwarded-Proto reach pier: the realm it builds is the public https URL.
    challenge = httpx.get(f"{front}/v2/", verify=trust)
    assert challenge.status_code == 401
    assert f'realm="{front}/auth/token"' in challenge.headers["www-authenticate"]
    repo = "deploy/through-nginx"
    token = httpx.get(
        f"{front}/auth/token",
        params={"service": "pier", "scope": f"repository:{repo}:pull,push"},
        auth=("alice", "wonderland"),
        verify=trust,
    ).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    image = build_image(tmp_path / "layout", "v1")
    big = tmp_path / "big.bin"  # past nginx's default 1 MiB body limit
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    data = big.read_bytes()
    blobs = [*image.blobs, Blob("application/octet-stream", sha256(data), len(data), big)]
    for blob in blobs:
        push_blob(front, repo, blob, headers=bearer, verify=trust)
    push_manifest(front, repo, "v1", image.manifest, headers=bearer, verify=trust)
    for server in servers[:2]:  # both replicas see everything: one store
        for blob in blobs:
            direct = httpx.head(f"{server.url}/v2/{repo}/blobs/{blob.digest}", headers=bearer)
            assert direct.status_code == 200, (server.url, blob.digest)
        manifest = httpx.get(f"{server.url}/v2/{repo}/manifests/v1", headers=bearer)
        assert manifest.status_code == 200 and manifest.content == image.manifest.read()
    fetched = httpx.get(f"{front}/v2/{repo}/blobs/{blobs[-1].digest}", headers=bearer, verify=trust)
    assert fetched.status_code == 200 and fetched.content == data

    # A client cannot choose the address pier counts its limits by: nginx replaces, not
    # extends, the X-Forwarded-For a client sends.
    forged = {"X-Forwarded-For": "203.0.113.77", **bearer}
    marker = f"/v2/{repo}/manifests/forged-xff"
    assert httpx.get(f"{front}{marker}", headers=forged, verify=trust).status_code == 404
    seen = wait_until(
        lambda: [line for s in servers[:2] for line in s.log().splitlines() if marker in line],
        what="the forged request in a replica's access log",
    )
    assert seen and not any("203.0.113.77" in line for line in seen), seen

    mirror = f"https://127.0.0.1:{mirror_port}"
    assert httpx.get(f"{mirror}/v2/", verify=trust).status_code == 200
    assert httpx.head(f"{mirror}/v2/", verify=trust).status_code == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refused = httpx.request(method, f"{mirror}/v2/library/x/blobs/uploads/", verify=trust)
        assert refused.status_code == 403, method


# -- Kubernetes -----------------------------------------------------------------------------------
def kubernetes_validate() -> str:
    path = os.path.join(sysconfig.get_path("scripts"), "kubernetes-validate")
    if not os.path.exists(path):
        pytest.fail("kubernetes-validate is not installed (pip install -e '.[test]'; scripts/dev-setup does)")
    return path


def test_kubernetes_manifests_validate_offline_against_the_stated_version(tmp_path: Path) -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests  # kustomize-ready: nothing left out
    paths = [str(KUBERNETES / name) for name in manifests]
    # --net: a namespace with no network at all, to prove the bundled schemas suffice.
    argv = ["unshare", "--net", kubernetes_validate(), "--strict", "-k", KUBERNETES_VERSION, *paths]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    short = KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert result.stdout.count("passed for resource") == len(manifests), result.stdout
    assert f"against version {short}" in result.stdout

    # The validation is real: one misspelt field fails it.
    broken = tmp_path / "deployment.yaml"
    broken.write_text((KUBERNETES / "deployment.yaml").read_text().replace("  replicas:", "  replica:", 1))
    failed = subprocess.run(
        [kubernetes_validate(), "--strict", "-k", KUBERNETES_VERSION, str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0 and "'replica' was unexpected" in failed.stdout + failed.stderr


def test_kubernetes_deployment_is_replicated_probed_limited_and_locked_down(tmp_path: Path) -> None:
    docs = {}
    for path in KUBERNETES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    kinds = {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Ingress", "Kustomization"}
    assert kinds <= set(docs)
    assert "Secret" not in docs  # secrets are referenced, created by the operator, never inlined

    deployment = docs["Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == IMAGE_UID
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["capabilities"]["drop"] == ["ALL"]

    secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    secrets |= {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"pier-s3", "pier-auth"}
    assert all("value" not in e for e in container["env"] if e["name"].startswith("AWS_"))

    # The ConfigMap is a pier config file pier accepts, mounted where PIER_CONFIG says.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_volume = next(v["name"] for v in pod["volumes"] if "configMap" in v)
    (key,) = docs["ConfigMap"]["data"]
    assert env["PIER_CONFIG"] == f"{mounts[config_volume]}/{key}"
    config_file = tmp_path / key
    config_file.write_text(docs["ConfigMap"]["data"][key])
    settings = load_settings(environ=pier_variables(env) | {"PIER_CONFIG": str(config_file)})
    assert settings.root.startswith("s3://") and settings.port == container["ports"][0]["containerPort"]
    assert settings.shutdown_delay >= 5
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_delay + settings.shutdown_timeout
    auth_mount = mounts[next(v["name"] for v in pod["volumes"] if "secret" in v)]
    assert Path(settings.htpasswd).parent == Path(settings.token_key).parent == Path(auth_mount)
    assert Path(settings.ui_session_key).parent == Path(auth_mount)  # shared by the replicas

    labels = spec["template"]["metadata"]["labels"]
    for selector in (
        spec["selector"]["matchLabels"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < spec["replicas"]
    backend = docs["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == docs["Service"]["metadata"]["name"]


# -- systemd ----------------------------------------------------------------------------------------
def systemd_root(tmp_path: Path, unit_text: str) -> Path:
    """A root for ``systemd-analyze --root``: this machine's system units, the unit, a stub pier."""
    root = tmp_path / "root"
    units = Path("/lib/systemd/system")
    if not units.is_dir():
        pytest.fail("systemd's units are not installed (Debian: apt-get install systemd)")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/pier.service").write_text(unit_text)
    stub = root / "opt/pier/bin/pier"  # verify checks that ExecStart's program exists
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return root


def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    unit = (DEPLOY / "systemd/pier.service").read_text()
    root = systemd_root(tmp_path, unit)
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "pier.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr

    # verify exits 0 on unknown keys and bad values too: its silence above is what counts.
    broken = unit.replace("ProtectHome=yes", "ProtectHom=yes")
    broken = broken.replace("ProtectSystem=strict", "ProtectSystem=x")
    broken_root = systemd_root(tmp_path / "broken", broken)
    noisy = subprocess.run(
        [analyze, "verify", f"--root={broken_root}", "pier.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key 'ProtectHom'" in noisy.stderr and "protect system value" in noisy.stderr

    security = subprocess.run(
        [analyze, "security", "--offline=true", f"--root={root}", "--threshold=20", "pier.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for pier\.service: (\d+\.\d)", security.stdout)
    assert security.returncode == 0 and exposure, security.stdout[-2000:] + security.stderr
    assert float(exposure.group(1)) <= 2.0  # systemd's scale: 0 (locked down) to 10 (exposed)

    keys = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "pier",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert keys.get(key) == value, key
    assert "SystemCallFilter=@system-service" in unit
    # The config file it reads keeps the data in the StateDirectory.
    assert "--config /etc/pier/pier.toml" in keys["ExecStart"]
    settings = load_settings(environ={}, config_file=str(DEPLOY / "pier.toml"))
    assert settings.root == "/var/lib/pier" and settings.port == 5000


SANDBOX_PROBE = """
import errno, mmap, os, socket
for name, attempt in [
    ("sched_setaffinity (@resources)", lambda: os.sched_setaffinity(0, {0})),
    ("setuid (@privileged)", lambda: os.setuid(0)),
    ("AF_NETLINK socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    ("W+X memory", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
]:
    try:
        attempt()
        print(name, "allowed")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
"""


def test_pier_works_under_the_units_syscall_filter_and_memory_rules(seaweed, tmp_path: Path) -> None:
    """SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= of the unit, applied
    by tests/deploy_sandbox.py (no systemd here): pier serves TLS, bcrypt logins, signed tokens,
    S3 and two worker processes under them, and the rules do bite."""
    unit = DEPLOY / "systemd/pier.service"
    probe = subprocess.run(
        sandboxed(unit, [sys.executable, "-c", SANDBOX_PROBE]), capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [
        "sched_setaffinity (@resources) EPERM",
        "setuid (@privileged) EPERM",
        "AF_NETLINK socket EPERM",
        "W+X memory EACCES",
    ]

    certs = make_certificates(tmp_path / "tls")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    key, _ = write_signing_key(tmp_path / "keys")
    bucket = seaweed.new_bucket()
    port = free_port()
    argv = [sys.executable, "-m", "registry", "serve", "--addr", f"127.0.0.1:{port}"]
    argv += ["--root", f"s3://{bucket}/pier", "--workers", "2", "--access-log", "false"]
    argv += ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--htpasswd", str(htpasswd)]
    argv += ["--token-key", str(key)]
    log = tmp_path / "sandboxed-pier.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")} | seaweed.env
    with open(log, "wb") as out:
        process = subprocess.Popen(
            sandboxed(unit, argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    try:
        base = f"https://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", process, timeout=30)
        trust = ssl.create_default_context(cafile=str(certs.ca))
        repo = "deploy/sandboxed"
        token = httpx.get(
            f"{base}/auth/token",
            params={"service": "pier", "scope": f"repository:{repo}:pull,push"},
            auth=("alice", "wonderland"),
            verify=trust,
        ).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        image = build_image(tmp_path / "layout", "v1")
        for blob in image.blobs:
            push_blob(base, repo, blob, headers=bearer, verify=trust)
        push_manifest(base, repo, "v1", image.manifest, headers=bearer, verify=trust)
        for _ in range(4):  # requests land on both workers
            got = httpx.get(f"{base}/v2/{repo}/manifests/v1", headers=bearer, verify=trust)
            assert got.status_code == 200 and got.content == image.manifest.read()
        assert httpx.get(f"{base}/readyz", verify=trust).status_code == 200
        assert httpx.get(f"{base}/metrics", verify=trust).status_code == 200
        assert process.poll() is None
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=45)
    text = log.read_text(errors="replace")
    assert process.returncode == 0 and "Traceback" not in text, text[-3000:]
