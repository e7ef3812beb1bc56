"""`pier build`: every instruction, the layer cache, multi-stage, mounts, and hostile contexts.

Each test builds in its own PIER_HOME on the busybox base (``build_fixtures``), with RUN
steps under real runc on overlay mounts of the layer store.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from .build_fixtures import BASE, Home, digest_of, make_home

pytestmark = pytest.mark.slow  # runc containers


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path)


def context_with(
    tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None, name: str = "ctx"
) -> Path:
    context = tmp_path / name
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    for path, content in (files or {}).items():
        target = context / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return context


def step_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("[")]


def test_every_config_instruction_lands_in_the_image_config(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""# syntax=docker/dockerfile:1
ARG BASE={BASE}
FROM $BASE
ARG VERSION=1.0
ENV APP_HOME=/srv/app \\
    GREETING="hello world"
LABEL org.opencontainers.image.version=$VERSION "team"="ml platform"
WORKDIR $APP_HOME
WORKDIR sub
USER 1000:1000
EXPOSE 8080 53/udp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD wget -q http://localhost/ || exit 1
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING"]
""",
    )
    digest = digest_of(home.build(context, "-t", "local/config:1", "--build-arg", "VERSION=2.5"))
    config = home.config(digest)
    inner = config["config"]
    assert "APP_HOME=/srv/app" in inner["Env"] and "GREETING=hello world" in inner["Env"]
    assert inner["Labels"] == {"org.opencontainers.image.version": "2.5", "team": "ml platform"}
    assert inner["WorkingDir"] == "/srv/app/sub"
    assert inner["User"] == "1000:1000"
    assert inner["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert inner["Volumes"] == {"/data": {}}
    assert inner["StopSignal"] == "SIGTERM"
    assert inner["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q http://localhost/ || exit 1"],
        "Interval": 30_000_000_000,
        "Timeout": 5_000_000_000,
        "Retries": 3,
    }
    assert inner["Entrypoint"] == ["/bin/sh", "-c"] and inner["Cmd"] == ["echo $GREETING"]
    history = config["history"]
    assert history[-1]["created_by"] == 'CMD ["echo $GREETING"]' and history[-1]["empty_layer"] is True
    assert len([h for h in history if not h.get("empty_layer")]) == len(config["rootfs"]["diff_ids"])
    run = home.pier("run", "--rm", "local/config:1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hello world"
    listed = home.pier("history", "local/config:1")
    assert listed.returncode == 0 and "WORKDIR /srv/app/sub" in listed.stdout


def test_run_copy_and_whiteouts_make_layers_that_pier_run_sees(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
COPY app/ /app/
COPY --chmod=0750 --chown=1000:1000 run.sh /usr/local/bin/
RUN rm /etc/group && mkdir -p /var/lib/thing && echo made > /var/lib/thing/state
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
RUN <<EOF
echo from-heredoc > /heredoc.txt
EOF
COPY <<EOF /etc/motd
welcome $HOSTNAME_UNSET
EOF
CMD ["sh", "-c", "cat /app/a.txt /app/sub/b.txt /var/lib/thing/state /exec.txt /heredoc.txt /etc/motd; \\
     test -e /etc/group || echo group-gone; ls -ln /usr/local/bin/run.sh"]
""",
        {"app/a.txt": "a\n", "app/sub/b.txt": "b\n", "run.sh": "#!/bin/sh\necho run\n"},
    )
    digest = digest_of(home.build(context, "-t", "local/files:1"))
    run = home.pier("run", "--rm", "local/files:1")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:7] == ["a", "b", "made", "exec-form", "from-heredoc", "welcome ", "group-gone"]
    assert lines[7].startswith("-rwxr-x---") and " 1000 " in lines[7]
    layers = home.manifest(digest)["layers"]
    rm_layer = next(layer for layer in layers if "etc/.wh.group" in home.layer_members(layer))
    members = home.layer_members(rm_layer)
    assert "var/lib/thing/state" in members and members["etc/.wh.group"].size == 0
    assert all(m.uname == "" and m.gname == "" for m in members.values())


def test_rebuild_with_no_change_runs_nothing_and_gives_the_same_image(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
RUN echo $RANDOM > /random
COPY . /src
RUN cat /src/main.py > /copied
ENV DONE=1
""",
        {"main.py": "print('v1')\n"},
    )
    first = home.build(context, "-t", "local/cache:1")
    second = home.build(context, "-t", "local/cache:1")
    assert digest_of(first) == digest_of(second)
    lines = step_lines(second)
    assert len(lines) == 5
    output = second.stderr
    assert output.count("CACHED") == 3, output  # every step that makes a layer (config steps just apply)
    assert "  | " not in output  # no RUN printed output: none ran


def test_changing_one_source_file_reruns_only_from_its_copy(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
COPY requirements.txt /app/
RUN echo installing; cat /app/requirements.txt > /app/installed
COPY src/ /app/src/
RUN echo building; cat /app/src/main.py > /app/built
""",
        {"requirements.txt": "numpy\n", "src/main.py": "print('v1')\n", "README.md": "docs\n"},
    )
    digest_of(home.build(context))
    (context / "src" / "main.py").write_text("print('v2')\n")
    again = home.build(context, "-t", "local/partial:1")
    lines = again.stderr.splitlines()
    assert "  | installing" not in again.stderr and "  | building" in again.stderr
    cached = [i for i, line in enumerate(lines) if line.strip() == "CACHED"]
    assert len(cached) == 2, again.stderr  # COPY requirements.txt and the RUN after it
    run = home.pier("run", "--rm", "local/partial:1", "cat", "/app/built")
    assert run.stdout == "print('v2')\n"
    (context / "README.md").write_text("changed, but no COPY takes it\n")
    third = home.build(context, "-t", "local/partial:1")
    assert third.stderr.count("CACHED") == 4  # no COPY takes README.md


def test_arg_change_invalidates_what_follows_and_unused_args_warn(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path, f"FROM {BASE}\nRUN echo before\nARG FLAVOR=plain\nRUN echo flavor=$FLAVOR > /flavor\n"
    )
    digest_of(home.build(context))
    spicy = home.build(context, "--build-arg", "FLAVOR=spicy", "--build-arg", "NOBODY=1", "-t", "local/arg:1")
    assert "flavor=" not in spicy.stderr.split("ARG FLAVOR")[0]
    assert spicy.stderr.count("CACHED") == 1  # RUN echo before
    assert "NOBODY" in spicy.stderr and "warning" in spicy.stderr
    run = home.pier("run", "--rm", "local/arg:1", "cat", "/flavor")
    assert run.stdout == "flavor=spicy\n"
    config = home.config(digest_of(spicy))
    assert not any(item.startswith("FLAVOR=") for item in config["config"].get("Env", []))


def test_multi_stage_builds_only_what_the_target_needs(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE} AS build
RUN mkdir /out && echo compiled > /out/app && echo junk > /junk
FROM {BASE} AS broken
RUN echo this stage must not run && exit 3
FROM scratch AS final
COPY --from=build /out/app /app
COPY --from=0 /bin/busybox /bin/sh
CMD ["/bin/sh", "-c", "read line < /app; echo $line"]
FROM final AS test
RUN ["/bin/sh", "-c", "exit 0"]
""",
    )
    result = home.build(context, "--target", "final", "-t", "local/multi:1")
    digest = digest_of(result)
    assert "must not run" not in result.stderr and "[broken" not in result.stderr
    assert "[test" not in result.stderr
    run = home.pier("run", "--rm", "local/multi:1")
    assert run.stdout.strip() == "compiled", run.stderr
    layers = home.manifest(digest)["layers"]
    assert len(layers) == 2 and all("junk" not in home.layer_members(layer) for layer in layers)
    missing = home.build(context, "--target", "nope")
    assert missing.returncode != 0 and "no such stage" in missing.stderr


def test_cache_mount_persists_across_builds_and_stays_out_of_the_image(home: Home, tmp_path: Path) -> None:
    dockerfile = f"""FROM {BASE}
ARG ROUND
RUN --mount=type=cache,target=/root/.cache/pip \\
    echo $ROUND >> /root/.cache/pip/log && cat /root/.cache/pip/log > /seen
"""
    context = context_with(tmp_path, dockerfile)
    digest_of(home.build(context, "--build-arg", "ROUND=one"))
    second = digest_of(home.build(context, "--build-arg", "ROUND=two", "-t", "local/cachemount:1"))
    run = home.pier("run", "--rm", "local/cachemount:1", "cat", "/seen")
    assert run.stdout.split() == ["one", "two"]
    for layer in home.manifest(second)["layers"]:
        assert not any(name.startswith("root/.cache/pip/") for name in home.layer_members(layer))


def test_secrets_reach_run_but_no_layer_history_or_cache_key(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /token-length
RUN --mount=type=secret,id=token,env=TOKEN test "$TOKEN" != "" && echo has-env > /env-seen
""",
    )
    (tmp_path / "token1").write_text("s3cr3t-value-one")
    (tmp_path / "token2").write_text("s3cr3t-value-two")
    first = home.build(context, "--secret", f"id=token,src={tmp_path / 'token1'}", "-t", "local/secret:1")
    digest = digest_of(first)
    run = home.pier("run", "--rm", "local/secret:1", "cat", "/token-length", "/env-seen")
    assert run.stdout.split() == ["16", "has-env"]
    for descriptor in [home.manifest(digest)["config"], *home.manifest(digest)["layers"]]:
        blob = home.blob(descriptor["digest"])
        import gzip

        raw = gzip.decompress(blob) if descriptor["mediaType"].endswith("gzip") else blob
        assert b"s3cr3t" not in raw
        if descriptor["mediaType"].endswith("gzip"):
            assert "run/secrets/token" not in home.layer_members(descriptor)
    # another secret value is the same cache key: the value is never part of it
    second = home.build(context, "--secret", f"id=token,src={tmp_path / 'token2'}")
    assert second.stderr.count("CACHED") == 2
    cache = home.path / "build-cache"
    assert not any(b"s3cr3t" in p.read_bytes() for p in cache.rglob("*") if p.is_file())
    missing = home.build(
        context_with(
            tmp_path, f"FROM {BASE}\nRUN --mount=type=secret,id=absent,required=true true\n", name="c2"
        )
    )
    assert missing.returncode != 0 and "absent" in missing.stderr and "Traceback" not in missing.stderr


def test_failing_run_reports_its_code_and_tail_tags_nothing_and_keeps_the_cache(
    home: Home, tmp_path: Path
) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
RUN echo good-step > /good
RUN echo line-one; echo line-two; exit 7
""",
    )
    failed = home.build(context, "-t", "local/failing:1")
    assert failed.returncode == 1
    assert "exit code 7" in failed.stderr and "line-two" in failed.stderr and "Dockerfile:3" in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("pier: Dockerfile:3: ")  # the error: one line, last
    quiet = home.build(context, "-q")
    assert quiet.stderr.count("  | line-two") == 1 and "exit code 7" in quiet.stderr  # the tail, even quiet
    assert "Traceback" not in failed.stderr
    assert home.pier("inspect", "local/failing:1").returncode != 0  # nothing tagged
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo good-step > /good\nRUN true\n")
    fixed = home.build(context, "-t", "local/failing:1")
    assert fixed.returncode == 0 and fixed.stderr.count("CACHED") == 1


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM {base}\nFROB something\n", "Dockerfile:2: unknown instruction"),
        ("FROM {base}\nRUN --security=insecure true\n", "Dockerfile:2"),
        ("FROM {base}\nCOPY --parents a /b\n", "Dockerfile:2"),
        ("FROM --platform=linux/s390x {base}\n", "s390x"),
        ("RUN true\n", "Dockerfile:1"),
        ("FROM {base}\nRUN --mount=type=ssh true\n", "ssh"),
    ],
)
def test_unsupported_or_wrong_input_fails_with_its_line(
    home: Home, tmp_path: Path, dockerfile: str, message: str
) -> None:
    context = context_with(tmp_path, dockerfile.format(base=BASE))
    result = home.build(context)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 300


def test_platform_other_than_the_machine_is_refused(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\n")
    result = home.build(context, "--platform", "linux/riscv64")
    assert result.returncode != 0 and "riscv64" in result.stderr


def test_hostile_contexts_stay_inside(home: Home, tmp_path: Path) -> None:
    outside = tmp_path / "outside-secret"
    outside.write_text("host secret\n")
    context = context_with(tmp_path, f"FROM {BASE}\nCOPY ../../outside-secret /stolen\n")
    escaped = home.build(context)
    assert escaped.returncode != 0 and "Traceback" not in escaped.stderr
    (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY evil/outside-secret /stolen\n")
    (context / "evil").symlink_to(tmp_path)
    via_link = home.build(context)
    assert via_link.returncode != 0  # the link's target is resolved inside the context: nothing there
    (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY . /ctx\n")
    (context / ".dockerignore").write_text("../*\n!../outside-secret\nDockerfile\n")
    copied = home.build(context, "-t", "local/hostile:1")
    digest = digest_of(copied)
    run = home.pier("run", "--rm", "local/hostile:1", "sh", "-c", "ls -la /ctx; readlink /ctx/evil")
    assert "Dockerfile" not in run.stdout
    assert run.stdout.strip().endswith(str(tmp_path))  # kept as a link, never followed
    for layer in home.manifest(digest)["layers"]:
        assert b"host secret" not in home.blob(layer["digest"])


def test_add_extracts_local_archives_and_checks_url_checksums(home: Home, tmp_path: Path) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/data.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.bin").write_bytes(b"weights" * 100)
    import hashlib

    good = "sha256:" + hashlib.sha256(b"weights" * 100).hexdigest()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model.bin"
        context = context_with(
            tmp_path,
            f"FROM {BASE}\nADD bundle.tar.gz /opt/\nADD --checksum={good} {url} /models/\n",
        )
        (context / "bundle.tar.gz").write_bytes(archive.getvalue())
        built = home.build(context, "-t", "local/add:1")
        digest_of(built)
        run = home.pier(
            "run", "--rm", "local/add:1", "sh", "-c", "cat /opt/pkg/data.txt; wc -c < /models/model.bin"
        )
        assert run.stdout.split("\n")[:2] == ["from the archive", "700"]
        bad = "sha256:" + "0" * 64
        (context / "Dockerfile").write_text(f"FROM {BASE}\nADD --checksum={bad} {url} /models/\n")
        refused = home.build(context)
        assert refused.returncode != 0 and "checksum" in refused.stderr
    finally:
        server.shutdown()


def test_same_inputs_with_source_date_epoch_give_the_same_digest(tmp_path: Path) -> None:
    dockerfile = f"""FROM {BASE}
COPY . /src
RUN mkdir /out && cp /src/data.txt /out/ && touch /out/stamp && rm /etc/group
WORKDIR /srv
"""
    digests = []
    for round_ in ("one", "two"):
        root = tmp_path / round_
        root.mkdir()
        home = make_home(root)
        context = context_with(root, dockerfile, {"data.txt": "same bytes\n"})
        time.sleep(1.1)  # sleep-ok: the second build must see other mtimes and another clock second
        digests.append(digest_of(home.build(context, env={"SOURCE_DATE_EPOCH": "1700000000"})))
    assert digests[0] == digests[1]


def test_steps_on_copies_instead_of_overlay_make_the_same_image(tmp_path: Path) -> None:
    dockerfile = f"""FROM {BASE} AS build
RUN mkdir /out && echo artefact > /out/a
FROM {BASE}
COPY data/ /data/
RUN rm /etc/group && rm -rf /data/sub && mkdir /data/sub && echo x > /data/new && chmod 0600 /data/keep.txt
COPY --from=build /out/a /srv/
WORKDIR /work/dir
"""
    digests = []
    for mode in ("overlay", "copy"):
        root = tmp_path / mode
        home = make_home(root)
        context = context_with(root, dockerfile, {"data/keep.txt": "keep\n", "data/sub/old.txt": "old\n"})
        env = {"SOURCE_DATE_EPOCH": "1700000000", "PIER_BUILD_ROOTFS": mode}
        digests.append(digest_of(home.build(context, "-t", "local/modes:1", env=env)))
    assert digests[0] == digests[1]
    run = home.pier(
        "run", "--rm", "local/modes:1", "sh", "-c", "ls /etc /data/sub; cat /data/new /srv/a; pwd"
    )
    assert run.returncode == 0, run.stderr
    assert "group" not in run.stdout.split() and "old.txt" not in run.stdout
    assert run.stdout.split()[-3:] == ["x", "artefact", "/work/dir"]


def test_docker_format_zstd_and_onbuild(home: Home, tmp_path: Path) -> None:
    parent = context_with(tmp_path, f"FROM {BASE}\nONBUILD RUN echo triggered > /onbuild\n", name="parent")
    digest_of(home.build(parent, "-t", "local/parent:1", "--format", "docker"))
    docker = home.manifest(digest_of(home.build(parent, "--format", "docker")))
    assert docker["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert {layer["mediaType"] for layer in docker["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    child = context_with(tmp_path, "FROM local/parent:1\n", name="child")
    digest = digest_of(home.build(child, "-t", "local/child:1", "--compression", "zstd"))
    assert home.manifest(digest)["layers"][-1]["mediaType"].endswith("+zstd")
    assert "OnBuild" not in home.config(digest)["config"]
    run = home.pier("run", "--rm", "local/child:1", "cat", "/onbuild")
    assert run.stdout == "triggered\n"


def test_network_none_has_only_loopback(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN ls /sys/class/net > /interfaces\n")
    built = home.build(context, "--network", "none", "-t", "local/nonet:1")
    digest_of(built)
    run = home.pier("run", "--rm", "local/nonet:1", "cat", "/interfaces")
    assert run.stdout.split() == ["lo"]


def test_a_build_killed_mid_step_leaves_store_and_cache_consistent(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN echo first > /first\nRUN echo started; sleep 60\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "puller", "build", str(context)],
        env={**os.environ, "PIER_HOME": str(home.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("  | started"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    building = list((home.path / "layers").glob(".building-*"))
    assert building  # what the killed build left: cleaned by the next one
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo first > /first\nRUN true\n")
    again = home.build(context, "-t", "local/killed:1")
    digest_of(again)
    assert again.stderr.count("CACHED") == 1
    assert not list((home.path / "layers").glob(".building-*"))
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(home.path) not in mounts
    states = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout
    assert "pier-build" not in states


def test_history_shows_each_step(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN echo x > /x\nENV A=1\n")
    digest_of(home.build(context, "-t", "local/history:1"))
    listed = home.pier("history", "--json", "local/history:1")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows[0]["created_by"] == "ENV A=1" and rows[0]["size"] == 0
    assert rows[1]["created_by"].startswith("RUN") and rows[1]["size"] > 0


def test_shell_globs_link_from_image_mounts_user_and_host_network(home: Home, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "hello").write_text("from the host network\n")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
SHELL ["/bin/sh", "-e", "-c"]
COPY *.cfg /etc/app/
COPY --link --chmod=0644 linked.txt /linked/
COPY --from={BASE} /etc/passwd /from-image-passwd
RUN --mount=type=bind,source=bound,target=/ctx cat /ctx/bound.txt > /bound-copy
RUN --mount=type=tmpfs,target=/scratch \\
    touch /scratch/x && grep -q " /scratch tmpfs" /proc/mounts && echo ok > /tmpfs
RUN echo "app:x:1234:1234::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1234:" >> /etc/group \\
    && mkdir -p /home/app && chown 1234:1234 /home/app
COPY --chown=app owned.txt /home/app/
USER app
RUN id -u > /home/app/uid && wget -q -O /home/app/fetched http://127.0.0.1:{port}/hello
""",
        {
            "a.cfg": "a\n",
            "b.cfg": "b\n",
            "skip.txt": "not a cfg\n",
            "linked.txt": "linked\n",
            "bound/bound.txt": "bound\n",
            "owned.txt": "owned\n",
        },
    )
    try:
        digest = digest_of(home.build(context, "-t", "local/various:1"))
    finally:
        server.shutdown()
    script = (
        "ls /etc/app; cat /linked/linked.txt /bound-copy /tmpfs /home/app/uid /home/app/fetched; "
        "stat -c '%u %a' /home/app/owned.txt /linked/linked.txt; head -1 /from-image-passwd; id -u"
    )
    run = home.pier("run", "--rm", "local/various:1", "sh", "-c", script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "a.cfg",
        "b.cfg",
        "linked",
        "bound",
        "ok",
        "1234",
        "from the host network",
        "1234 644",
        "0 644",
        "root:x:0:0:root:/root:/bin/sh",
        "1234",
    ]
    for layer in home.manifest(digest)["layers"]:
        names = home.layer_members(layer)
        assert not any(name.startswith(("ctx/", "scratch/")) for name in names)
        assert not {"etc/hosts", "etc/resolv.conf", "etc/hostname"} & set(names)


def test_mount_options_pier_does_not_know_fail_with_the_line(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN --mount=type=cache,target=/c,colour=blue true\n")
    result = home.build(context)
    assert result.returncode != 0 and "Dockerfile:2" in result.stderr and "colour" in result.stderr
    (context / "Dockerfile").write_text(
        f"FROM {BASE}\nRUN --mount=type=cache,target=/c,sharing=locked echo locked > /c/x && cat /c/x\n"
    )
    locked = home.build(context)
    assert locked.returncode == 0 and "  | locked" in locked.stderr, locked.stderr


def test_hostile_destinations_and_mount_targets_stay_inside_the_rootfs(home: Home, tmp_path: Path) -> None:
    outside = tmp_path / "host-side"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("pwned.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    context = context_with(
        tmp_path,
        f"""FROM {BASE}
RUN ln -s {outside} /escape && ln -s /real /link && mkdir /real
ADD evil.tar /escape
COPY dir/ /link/
RUN --mount=type=secret,id=tok,target=../../../../../../../..{outside}/secret cat {outside}/secret > /seen
""",
        {"dir/f.txt": "f\n"},
    )
    (context / "evil.tar").write_bytes(archive.getvalue())
    (tmp_path / "tok").write_text("value")
    digest_of(home.build(context, "-t", "local/hostile-dest:1", "--secret", f"id=tok,src={tmp_path / 'tok'}"))
    assert not outside.exists()  # neither the tar, nor a mount point, reached the host
    run = home.pier(
        "run", "--rm", "local/hostile-dest:1", "sh", "-c", f"cat {outside}/pwned.txt /real/f.txt /seen"
    )
    assert run.stdout == "badf\nvalue", run.stderr  # the image's symlinks followed inside it


def test_cache_keys_cover_heredoc_scripts_output_format_and_bind_files(home: Home, tmp_path: Path) -> None:
    dockerfile = f"""FROM {BASE}
RUN <<EOF
#!/bin/sh
echo {{word}} > /word
echo {{word}} > /word
EOF
RUN --mount=type=bind,source=req.txt,target=/tmp/req.txt cat /tmp/req.txt > /req
"""
    context = context_with(tmp_path, dockerfile.format(word="one"), {"req.txt": "numpy\n"})
    plain = digest_of(home.build(context, "-t", "local/keys:1"))
    run = home.pier("run", "--rm", "local/keys:1", "cat", "/word", "/req")
    assert run.stdout == "one\nnumpy\n", run.stderr
    (context / "Dockerfile").write_text(dockerfile.format(word="two"))
    changed = home.build(context, "-t", "local/keys:1")
    assert "CACHED" not in changed.stderr
    assert home.pier("run", "--rm", "local/keys:1", "cat", "/word").stdout == "two\n"
    (context / "req.txt").write_text("torch\n")
    assert home.build(context).stderr.count("CACHED") == 1  # the bound file's content is in the key
    zstd = home.build(context, "--compression", "zstd")
    assert zstd.stderr.count("CACHED") == 0 and digest_of(zstd) != plain
    epoch = home.build(context, env={"SOURCE_DATE_EPOCH": "0"})
    assert epoch.stderr.count("CACHED") == 0


def test_network_none_cannot_be_overridden_by_the_dockerfile(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN --network=host true\n")
    refused = home.build(context, "--network", "none")
    assert refused.returncode != 0 and "Dockerfile:2" in refused.stderr and "none" in refused.stderr


def test_variables_in_copy_flags_and_arg_history(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE} AS src
RUN echo from-stage > /made
FROM {BASE}
ARG UID=1234
ARG SRC=src
COPY --from=$SRC --chown=${{UID}}:${{UID}} /made /made
""",
    )
    digest = digest_of(home.build(context, "-t", "local/flags:1"))
    run = home.pier("run", "--rm", "local/flags:1", "stat", "-c", "%u:%g", "/made")
    assert run.stdout == "1234:1234\n", run.stderr
    history = home.config(digest)["history"]
    assert {"ARG UID=1234", "ARG SRC=src"} <= {h["created_by"] for h in history}
    layers = home.config(digest)["rootfs"]["diff_ids"]
    assert len([h for h in history if not h.get("empty_layer")]) == len(layers)


def test_prune_keeps_the_build_cache_unless_told_to_drop_it(home: Home, tmp_path: Path) -> None:
    context = context_with(tmp_path, f"FROM {BASE}\nRUN --mount=type=cache,target=/c echo ran > /ran\n")
    digest_of(home.build(context, "-t", "local/pruned:1"))
    assert home.pier("rmi", "local/pruned:1").returncode == 0
    assert home.pier("prune").returncode == 0
    kept = home.build(context)
    assert kept.stderr.count("CACHED") == 1  # the cache's layer survived the prune
    dropped = home.pier("prune", "--build-cache")
    assert dropped.returncode == 0 and "build cache" in dropped.stdout
    assert not (home.path / "build-cache" / "mounts").exists()
    again = home.build(context)
    assert again.returncode == 0 and again.stderr.count("CACHED") == 0


def test_copy_from_a_stage_is_keyed_by_the_files_it_takes(home: Home, tmp_path: Path) -> None:
    context = context_with(
        tmp_path,
        f"""FROM {BASE} AS build
RUN mkdir /a && echo a > /a/x
COPY b.txt /b.txt
FROM {BASE}
COPY --from=build /a /a
COPY --from=build /b.txt /b.txt
""",
        {"b.txt": "one\n"},
    )
    digest_of(home.build(context))
    (context / "b.txt").write_text("two\n")
    again = home.build(context, "-t", "local/from-content:1")
    lines = again.stderr.splitlines()
    after = {
        lines[i - 1].split("] ", 1)[1]: lines[i].strip()
        for i in range(1, len(lines))
        if "COPY --from" in lines[i - 1]
    }
    assert after["COPY --from=build /a /a"] == "CACHED"  # /a did not change, though the stage did
    assert after["COPY --from=build /b.txt /b.txt"].startswith("DONE")
    run = home.pier("run", "--rm", "local/from-content:1", "cat", "/a/x", "/b.txt")
    assert run.stdout == "a\ntwo\n", run.stderr
