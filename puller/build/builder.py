"""``pier build``: run a Dockerfile's stages, step by step, through the build cache.

Each stage starts from its ``FROM`` (an image from the local store or a registry, an
earlier stage, or ``scratch``) and keeps the image config and layers as it goes. Config
instructions only change the config; ``RUN``, ``COPY``, ``ADD`` and a ``WORKDIR`` that
creates its directory run in a ``Sandbox`` and their writes become a layer, unless the
cache has the step already. Only the stages the target needs are built.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import posixpath
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from ..errors import PierError
from ..reference import Reference
from ..run.oci_runtime import find_runtime
from ..store.content_store import ContentStore
from ..store.image import Image
from ..store.platforms import Platform
from ..unpack.layer_store import LayerStore, force_rmtree, verified
from ..unpack.layers import resolve_inside
from ..unpack.rootfs import image_layers
from . import metadata, run_step
from .cache import BuildCache, CachedStep, step_key
from .context import BuildContext
from .copying import CopyStep, content_key, copy_step
from .dockerfile import (
    Dockerfile,
    DockerfileError,
    Instruction,
    arg_values,
    expand,
    parse,
    parse_flag_options,
)
from .image_output import Built, Layer, write_image
from .layer_writer import adopt, write_layer
from .sandbox import Sandbox, Session
from .stages import Stage, find, needed, split

MAX_DOCKERFILE = 4 * 1024 * 1024
# docker passes these through without an ARG and leaves them out of the cache key and history
PROXY_ARGS = frozenset(
    name
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)
SOLE_HEREDOC = re.compile(r"<<-?(['\"]?)([A-Za-z0-9_.-]+)\1")


MOUNT_OPTIONS = {  # BuildKit's, less those pier does not do (they fail, with the line)
    "secret": {"id", "required", "mode", "uid", "gid", "env"},
    "cache": {"id", "sharing", "mode", "uid", "gid", "ro", "readonly"},
    "bind": {"source", "src", "from", "ro", "readonly", "rw", "readwrite"},
    "tmpfs": {"size"},
}


class BuildFailed(PierError):
    pass


@dataclass
class BuildOptions:
    context: Path
    dockerfile: Path
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    network: str = "host"
    secrets: dict[str, bytes] = field(default_factory=dict)
    no_cache: bool = False
    docker_format: bool = False
    compression: str = "gzip"
    epoch: int | None = None
    quiet: bool = False
    runtime: str | None = None
    platform: Platform = field(default_factory=Platform.host)
    remote_caches: list[RemoteSteps] = field(default_factory=list)  # --cache-from


class RemoteSteps(Protocol):
    def get(self, key: str) -> CachedStep | None: ...


@dataclass
class StageState:
    image: dict  # the config's top-level fields: architecture, os, variant, author
    config: dict  # the config's "config": Env, Cmd, WorkingDir...
    layers: list[Layer]
    paths: list[Path]  # their directories in the layer store, bottom first
    history: list[dict]
    key: str
    created: str
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False  # a CMD in this stage: a later ENTRYPOINT keeps it

    def scope(self) -> dict[str, str]:
        """What ``$NAME`` means in this stage now: ENV over ARG, as docker has it."""
        return {**self.args, **metadata.env_dict(self.config)}


class Printer:
    """Step lines on stderr (``[build 2/5] RUN ...``, CACHED, the time), the command's output indented."""

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream = stream
        self.quiet = quiet
        self.started = 0.0

    def step(self, stage: Stage, number: int, total: int, text: str) -> None:
        self.started = time.monotonic()
        label = f"{stage.name} " if stage.name else ""
        shown = text if len(text) <= 200 else text[:197] + "..."
        self.say(f"[{label}{number}/{total}] {shown}")

    def output(self, line: str) -> None:
        if not self.quiet:
            self.stream.write(f"  | {line}\n")
            self.stream.flush()

    def cached(self) -> None:
        self.say("  CACHED")

    def done(self) -> None:
        self.say(f"  DONE {time.monotonic() - self.started:.1f}s")

    def say(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


def rfc3339(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Builder:
    session: Session  # the build's scratch directory, while ``build`` runs

    def __init__(
        self,
        store: ContentStore,
        options: BuildOptions,
        fetch: Callable[[str], Image],
        printer: Printer | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.fetch = fetch
        self.printer = printer or Printer(sys.stderr, options.quiet)
        self.cache = BuildCache(store.root)
        self.layer_store = LayerStore(store.root)
        self.states: dict[int, StageState] = {}
        self.used_args: set[str] = set()
        self.used_steps: dict[str, CachedStep] = {}  # what --cache-to exports
        self._runtime: str | None = None
        self._context: BuildContext | None = None
        self._downloads: dict[str, Path] = {}  # ADD URLs fetched for their cache key, used by the step
        self._pending: list[Path] = []  # a step's scratch (changes, secrets, bind sources): dropped after it
        self._locks: list[int] = []
        # what shapes a layer's bytes and times besides its files: part of every layer step's key
        self.profile = json.dumps(
            [options.compression, options.docker_format, options.epoch]
        )  # cache mounts with sharing=locked, held for the step

    # -- the whole build --------------------------------------------------------------

    def build(self, tags: Sequence[Reference] = ()) -> Built:
        """Build, and tag ``tags`` before a waiting prune may look: it would see an untagged image."""
        dockerfile = self._read_dockerfile()
        global_args = self._global_args(dockerfile)
        preamble, stages = split(dockerfile, global_args)
        del preamble
        chosen = needed(stages, self.options.target, global_args, dockerfile.escape)
        self._plan = (dockerfile, stages, global_args)
        # shared: a prune waits until the image is tagged and its cache written
        with self.store.lock(), Session(self.layer_store.root) as self.session:
            for stage in chosen:
                if stage.index not in self.states:  # (built already when a later --from needed it)
                    self.states[stage.index] = self._stage(dockerfile, stages, stage, global_args)
            final = self.states[chosen[-1].index]
            unused = set(self.options.build_args) - self.used_args - PROXY_ARGS
            if unused:
                self.printer.say(f"[warning] build args not consumed by any ARG: {', '.join(sorted(unused))}")
            built = write_image(
                self.store,
                final.image,
                final.config,
                final.layers,
                final.history,
                docker=self.options.docker_format,
            )
            for tag in tags:
                self.store.set_ref(tag.name, tag.tag or "latest", built.digest)
            return built

    def _read_dockerfile(self) -> Dockerfile:
        path = self.options.dockerfile
        try:
            if path.stat().st_size > MAX_DOCKERFILE:
                raise BuildFailed(f"{path}: larger than {MAX_DOCKERFILE // 1024 // 1024} MiB")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BuildFailed(f"no Dockerfile at {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BuildFailed(f"cannot read {path}: {exc}") from None
        return parse(text)

    def _platform_args(self) -> dict[str, str]:
        platform = self.options.platform
        values = {}
        for prefix in ("BUILD", "TARGET"):
            values[f"{prefix}PLATFORM"] = str(platform)
            values[f"{prefix}OS"] = platform.os
            values[f"{prefix}ARCH"] = platform.architecture
            values[f"{prefix}VARIANT"] = platform.variant or ""
        return values

    def _global_args(self, dockerfile: Dockerfile) -> dict[str, str]:
        scope = self._platform_args()
        for instruction in dockerfile.instructions:
            if instruction.keyword == "FROM":
                break
            for name, default in self._arg_pairs(instruction, scope, dockerfile.escape):
                value = self.options.build_args.get(name, default)
                if value is not None:
                    scope[name] = value
        return scope

    def _arg_pairs(
        self, instruction: Instruction, scope: Mapping[str, str], escape: str
    ) -> list[tuple[str, str | None]]:
        pairs = arg_values(instruction, scope, escape)
        for name, _ in pairs:
            self.used_args.add(name)
        return [(name, value) for name, value in pairs]

    # -- one stage ----------------------------------------------------------------------

    def _stage(
        self, dockerfile: Dockerfile, stages: list[Stage], stage: Stage, global_args: dict[str, str]
    ) -> StageState:
        total = 1 + len(stage.instructions)
        self.printer.step(stage, 1, total, f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""))
        self._check_platform(stage.platform, global_args, stage.source.line)
        state = self._base(stages, stage)
        triggers = list(state.config.pop("OnBuild", None) or [])
        for text in triggers:
            for instruction in parse(f"FROM scratch\n{text}\n").instructions[1:]:
                self.printer.step(stage, 1, total, f"ONBUILD {instruction.original}")
                self._instruction(dockerfile, stages, stage, state, instruction, global_args)
        for number, instruction in enumerate(stage.instructions, 2):
            self.printer.step(stage, number, total, instruction.original)
            self._instruction(dockerfile, stages, stage, state, instruction, global_args)
        return state

    def stage_state(self, index: int) -> StageState:
        """A stage's result; built now when only a stage's own ARG named it (``--from=$SRC``)."""
        if index not in self.states:
            dockerfile, stages, global_args = self._plan
            self.printer.say(f"[{stages[index].label}] needed by --from: building it")
            self.states[index] = self._stage(dockerfile, stages, stages[index], global_args)
        return self.states[index]

    def _check_platform(self, text: str | None, scope: Mapping[str, str], line: int) -> None:
        if not text:
            return
        wanted = Platform.parse(expand(text, scope))
        host = self.options.platform
        if (wanted.os, wanted.architecture) != (host.os, host.architecture):
            raise DockerfileError(
                line, f"--platform={wanted}: this machine runs {host} and pier does not emulate others"
            )

    def _now(self) -> str:
        return rfc3339(self.options.epoch if self.options.epoch is not None else time.time())

    def _base(self, stages: list[Stage], stage: Stage) -> StageState:
        platform = self.options.platform
        if (earlier := find(stages, stage.base, stage.index)) is not None:
            state = copy.deepcopy(self.stage_state(earlier.index))
            state.args, state.cmd_set = {}, False
            return state
        if stage.base.lower() == "scratch":
            image = {"architecture": platform.architecture, "os": platform.os}
            if platform.variant:
                image["variant"] = platform.variant
            created = self._now()
            key = step_key("", "FROM scratch", str(platform))
            return StageState(image, {}, [], [], [], key, created)
        base = self.fetch(stage.base)
        paths = image_layers(self.store, base)
        layers = [Layer(d, i) for d, i in zip(base.layers, base.diff_ids, strict=True)]
        top = {k: base.config[k] for k in ("architecture", "os", "variant", "author") if base.config.get(k)}
        created = str(base.config.get("created") or self._now())
        config = copy.deepcopy(base.config.get("config") or {})
        history = copy.deepcopy(base.config.get("history") or [])
        key = step_key("", "FROM", base.digest)
        return StageState(top, config, layers, paths, history, key, created)

    def _instruction(
        self,
        dockerfile: Dockerfile,
        stages: list[Stage],
        stage: Stage,
        state: StageState,
        instruction: Instruction,
        global_args: dict[str, str],
    ) -> None:
        escape = dockerfile.escape
        keyword = instruction.keyword
        if keyword == "ARG":
            pairs = self._arg_pairs(instruction, state.scope(), escape)
            for name, default in pairs:
                value = self.options.build_args.get(name, default)
                if value is None:
                    value = global_args.get(name) if name in global_args else None
                if value is not None:
                    state.args[name] = value
                state.key = step_key(state.key, "ARG", name, value or "")
            text = "ARG " + " ".join(n if d is None else f"{n}={d}" for n, d in pairs)
            state.history.append({"created": state.created, "created_by": text, "empty_layer": True})
            return
        if keyword == "RUN":
            self._run(stages, stage, state, instruction, escape)
            return
        if keyword in ("COPY", "ADD"):
            self._copy(stages, stage, state, instruction, escape)
            return
        had_cmd = state.cmd_set
        text = metadata.apply(instruction, state.config, state.scope(), escape, state.image)
        if keyword == "ENTRYPOINT" and not had_cmd:
            state.config["Cmd"] = None  # docker: a new ENTRYPOINT drops the CMD inherited from the base
        if keyword == "CMD":
            state.cmd_set = True
        state.key = step_key(state.key, text)
        state.history.append({"created": state.created, "created_by": text, "empty_layer": True})
        if keyword == "WORKDIR":
            self._workdir(stage, state, text)

    # -- steps that make layers ----------------------------------------------------------

    def _layer_step(
        self,
        state: StageState,
        key: str,
        created_by: str,
        make: Callable[[], Path | None],
        history: bool = True,
    ) -> None:
        """A step through the cache: ``make`` runs on a miss and returns the changes' directory."""
        key = step_key(key, self.profile)  # the same step written as another format is another layer
        cached = None if self.options.no_cache else self._cached(key)
        if cached is not None:
            self.printer.cached()
        else:
            changes = make()
            cached = self._commit(changes)
            self.cache.put(key, cached)
            self.printer.done()
        state.key = key
        self.used_steps[key] = cached
        if not cached.empty:
            state.created = cached.created
            state.layers.append(Layer(cached.descriptor(), cached.diff_id))
            state.paths.append(self.layer_store.path(cached.diff_id))
        if history:
            entry: dict = {"created": cached.created, "created_by": created_by}
            if cached.empty:
                entry["empty_layer"] = True
            state.history.append(entry)

    def _cached(self, key: str) -> CachedStep | None:
        cached = self.cache.get(key, self.store)
        if cached is not None and (cached.empty or self._have_layer(cached)):
            return cached
        for remote in self.options.remote_caches:
            if (cached := remote.get(key)) is not None:
                self.cache.put(key, cached)
                return cached
        return None

    def _have_layer(self, step: CachedStep) -> bool:
        """The cached layer's directory, unpacked again from its blob if a prune took it."""
        if self.layer_store.has(step.diff_id):
            return True
        try:
            with self.store.path(step.digest).open("rb") as stream:
                self.layer_store.unpack(
                    step.diff_id, verified(stream, step.digest), step.media_type, step.digest
                )
        except (OSError, PierError):
            return False
        return True

    def _commit(self, changes: Path | None) -> CachedStep:
        created = self._now()
        if changes is None or not any(changes.iterdir()):
            return CachedStep(created)
        blob = self.session.base / f"blob-{time.monotonic_ns()}"
        try:
            with blob.open("wb") as out:
                written = write_layer(
                    changes,
                    out,
                    epoch=self.options.epoch,
                    compression=self.options.compression,
                    docker=self.options.docker_format,
                    portable=self.options.epoch is not None,  # reproducible: the same bytes anywhere
                )
                out.flush()
                os.fsync(out.fileno())
            target = self.store.path(written.digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(blob, target)
        finally:
            blob.unlink(missing_ok=True)
        adopt(changes, self.store.root, written.diff_id, written.digest, self.options.epoch)
        return CachedStep(created, written.diff_id, written.digest, written.size, written.media_type)

    def _workdir(self, stage: Stage, state: StageState, text: str) -> None:
        """WORKDIR creates its directory when the image lacks it, as BuildKit does: a layer."""
        path = state.config["WorkingDir"]
        key = step_key(state.key, "mkdir", path)
        state.history.pop()  # the history entry is the layer step's (empty when nothing was made)

        def make() -> Path | None:
            with Sandbox(self.session, state.paths) as sandbox:
                target = resolve_inside(sandbox.rootfs, path)
                if target.is_dir():
                    return None
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                return self._keep_changes(sandbox)

        self._layer_step(state, key, text, make)

    def _keep_changes(self, sandbox: Sandbox) -> Path:
        """The sandbox's changes, moved out of it before it is cleaned away."""
        changes = sandbox.changes()
        kept = self.session.base / f"changes-{sandbox.base.name}"
        os.rename(changes, kept)
        self._pending.append(kept)
        return kept

    # -- RUN ------------------------------------------------------------------------------

    def _run(
        self, stages: list[Stage], stage: Stage, state: StageState, instruction: Instruction, escape: str
    ) -> None:
        shell = metadata.config_shell(state.config)
        script: str | None = None
        if instruction.exec_form is not None:
            args = list(instruction.exec_form)
        elif instruction.heredocs:
            sole = SOLE_HEREDOC.fullmatch(instruction.rest.strip())
            if sole and len(instruction.heredocs) == 1:
                body = instruction.heredocs[0].content
                if body.startswith("#!"):
                    script = body
                    args = ["/.pier-heredoc"]
                else:
                    args = [*shell, body]
            else:
                text = (
                    instruction.rest + "\n" + "".join(h.content + h.name + "\n" for h in instruction.heredocs)
                )
                args = [*shell, text]
        else:
            args = [*shell, instruction.rest]
        network = instruction.flag("network") or "default"
        if network not in ("default", "host", "none"):
            raise DockerfileError(instruction.line, f"RUN --network={network}: use default, host or none")
        if network == "host" and self.options.network == "none":
            raise DockerfileError(
                instruction.line, "RUN --network=host, but the build was given --network none"
            )
        network = self.options.network if network == "default" else network
        env = {k: v for k, v in state.args.items()}
        env.update({k: v for k, v in self.options.build_args.items() if k in PROXY_ARGS})
        env.update(metadata.env_dict(state.config))
        mounts, mount_keys, secret_env, prepare = self._mounts(stages, stage, state, instruction, escape)
        env.update(secret_env)
        scope_args = {k: v for k, v in sorted(state.args.items())}
        key = step_key(
            state.key, "RUN", json.dumps(args), script or "", json.dumps(scope_args), network, *mount_keys
        )
        if instruction.heredocs:
            bodies = "".join(f"\n{h.content}{h.name}" for h in instruction.heredocs)
            created_by = f"RUN {instruction.rest}{bodies}"
        else:
            created_by = f"RUN {' '.join(args) if instruction.exec_form is None else json.dumps(args)}"
        workdir = state.config.get("WorkingDir") or "/"
        user = state.config.get("User") or None

        def make() -> Path | None:
            for step in prepare:
                step()
            process = run_step.Process(args, env, workdir, user, network, mounts)
            files, directories = run_step.mount_points(process)
            if script is not None:
                files.append("/.pier-heredoc")
            with Sandbox(self.session, state.paths, files, directories) as sandbox:
                if script is not None:
                    heredoc = sandbox.base / "mountpoints" / ".pier-heredoc"
                    heredoc.write_text(script)
                    heredoc.chmod(0o755)
                resolve_inside(sandbox.rootfs, workdir).mkdir(mode=0o755, parents=True, exist_ok=True)
                outcome = run_step.run(sandbox, process, self.runtime, self.store.root, self.printer.output)
                if outcome.exit_code != 0:
                    if self.options.quiet:  # its output was not shown as it came: show how it ended
                        for tail in outcome.tail[-10:]:
                            self.printer.stream.write(f"  | {tail}\n")
                    raise BuildFailed(
                        f"Dockerfile:{instruction.line}: {instruction.original[:120]} "
                        f"failed with exit code {outcome.exit_code}"
                    )
                return self._keep_changes(sandbox)

        try:
            self._layer_step(state, key, created_by, make)
        finally:
            self._drop_pending()

    def _drop_pending(self) -> None:
        for path in self._pending:
            force_rmtree(path)
        self._pending.clear()
        self._downloads.clear()
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()

    @property
    def runtime(self) -> str:
        if self._runtime is None:
            self._runtime = find_runtime(self.options.runtime)
        return self._runtime

    def _mounts(
        self, stages: list[Stage], stage: Stage, state: StageState, instruction: Instruction, escape: str
    ) -> tuple[list[dict], list[str], dict[str, str], list[Callable[[], None]]]:
        """RUN --mount flags: runtime mounts, their part of the cache key, secrets given as env, and
        what to prepare only when the step runs (secret files, bind sources, locks): a hit needs none."""
        mounts: list[dict] = []
        keys: list[str] = []
        secret_env: dict[str, str] = {}
        prepare: list[Callable[[], None]] = []
        line = instruction.line
        workdir = state.config.get("WorkingDir") or "/"
        locked: set[str] = set()
        for text in instruction.flag_values("mount"):
            options = parse_flag_options(expand(text, state.scope(), escape, line=line), line=line)
            kind = options.pop("type", "bind")
            target = (
                options.pop("target", None) or options.pop("dst", None) or options.pop("destination", None)
            )
            unknown = set(options) - MOUNT_OPTIONS.get(kind, set(options))
            if unknown:
                raise DockerfileError(line, f"RUN --mount=type={kind}: unknown option {sorted(unknown)[0]!r}")
            for number in ("uid", "gid"):
                if number in options and not (options[number].isascii() and options[number].isdigit()):
                    raise DockerfileError(line, f"RUN --mount {number}={options[number]!r}: a number")
            if "mode" in options and not re.fullmatch(r"[0-7]{3,4}", options["mode"]):
                raise DockerfileError(
                    line, f"RUN --mount mode={options['mode']!r}: an octal mode such as 0755"
                )
            if target:
                target = posixpath.normpath(posixpath.join(workdir, target))  # never ".." above the root
            if kind == "secret":
                secret_id = options.get("id") or (posixpath.basename(target) if target else "")
                if not secret_id:
                    raise DockerfileError(line, "RUN --mount=type=secret needs an id")
                value = self.options.secrets.get(secret_id)
                keys.append(f"secret:{secret_id}")  # the id only: never the value
                if value is None:
                    if options.get("required") in ("true", ""):
                        raise DockerfileError(
                            line, f"secret {secret_id!r} is required: pass --secret id={secret_id},src=FILE"
                        )
                    continue
                if options.get("env"):
                    secret_env[options["env"]] = value.decode(errors="replace")
                    if not target:
                        continue
                mount = {
                    "destination": target or f"/run/secrets/{posixpath.basename(secret_id)}",
                    "type": "bind",
                    "source": "",
                    "options": ["rbind", "ro"],
                }
                mounts.append(mount)
                prepare.append(functools.partial(self._secret_file, mount, value, options))
                continue
            if not target:
                raise DockerfileError(line, f"RUN --mount=type={kind} needs a target")
            if kind == "cache":
                cache_id = options.get("id") or target
                sharing = options.get("sharing", "shared")
                if sharing not in ("shared", "locked", "private"):
                    raise DockerfileError(line, f"RUN --mount sharing={sharing!r}: shared, locked or private")
                directory = self.cache.mount_directory(cache_id)
                if sharing != "shared" and cache_id not in locked:  # one step at a time (private: the same)
                    locked.add(cache_id)
                    prepare.append(functools.partial(self._lock_cache_mount, cache_id))
                if "mode" in options or "uid" in options or "gid" in options:
                    os.chown(directory, int(options.get("uid", 0)), int(options.get("gid", 0)))
                    directory.chmod(int(options.get("mode", "755"), 8))
                readonly = options.get("ro") == "true" or options.get("readonly") == "true"
                mounts.append(
                    {
                        "destination": target,
                        "type": "bind",
                        "source": str(directory),
                        "options": ["rbind", "ro" if readonly else "rw"],
                    }
                )
                keys.append(f"cache:{target}")
            elif kind == "tmpfs":
                size = options.get("size")
                mounts.append(
                    {
                        "destination": target,
                        "type": "tmpfs",
                        "source": "tmpfs",
                        "options": ["nosuid", "nodev", *([f"size={size}"] if size else [])],
                    }
                )
                keys.append(f"tmpfs:{target}")
            elif kind == "bind":
                if options.get("rw") == "true" or options.get("readwrite") == "true":
                    raise DockerfileError(
                        line, "RUN --mount=type=bind,rw is not supported by pier: bind mounts are read-only"
                    )
                step = CopyStep(sources=[options.get("source") or options.get("src") or "."], destination="/")
                step.from_ = options.get("from")
                mount = {"destination": target, "type": "bind", "source": "", "options": ["rbind", "ro"]}
                mounts.append(mount)
                keys.append(f"bind:{target}:{content_key(self, stages, stage, step, line)}")
                prepare.append(functools.partial(self._bind_source, mount, stages, stage, step, line))
            else:
                raise DockerfileError(
                    line, f"RUN --mount=type={kind} is not supported by pier (bind, cache, secret, tmpfs are)"
                )
        return mounts, keys, secret_env, prepare

    def _lock_cache_mount(self, cache_id: str) -> None:
        self._locks.append(self.cache.lock_mount(cache_id))

    def _secret_file(self, mount: dict, value: bytes, options: dict[str, str]) -> None:
        """The secret in a file in memory (/dev/shm), never on the store's disk; gone after the step."""
        shm = Path("/dev/shm")
        directory = Path(tempfile.mkdtemp(prefix="pier-secret-", dir=shm if shm.is_dir() else None))
        self._pending.append(directory)
        path = directory / "secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(value)
        os.chown(path, int(options.get("uid", 0)), int(options.get("gid", 0)))
        path.chmod(int(options.get("mode", "400"), 8))
        directory.chmod(0o755)  # the file's own mode and owner decide who reads it
        mount["source"] = str(path)

    def _bind_source(self, mount: dict, stages: list[Stage], stage: Stage, step: CopyStep, line: int) -> None:
        """A RUN bind mount's source: a copy of what it selects (ignored files left out); a file as a file."""
        directory = self.session.scratch("bind-")
        directory.chmod(0o755)
        copied = copy_step(self, stages, stage, step, directory, line, link=True)
        mount["source"] = str(directory / copied.single_file if copied.single_file else directory)

    # -- COPY and ADD ----------------------------------------------------------------------

    @property
    def context(self) -> BuildContext:
        if self._context is None:
            self._context = BuildContext(
                self.options.context,
                str(self.options.dockerfile.resolve()),
                cache_dir=self.cache.root / "context",
            )
        return self._context

    def _copy(
        self, stages: list[Stage], stage: Stage, state: StageState, instruction: Instruction, escape: str
    ) -> None:
        from .copying import plan_copy

        plan = plan_copy(self, stages, stage, state, instruction, escape)
        key = step_key(state.key if not plan.link else "", instruction.keyword, *plan.key_parts)
        created_by = f"{instruction.keyword} {plan.describe}"

        def make() -> Path | None:
            if plan.link:
                directory = self.session.scratch("link-")
                copied = copy_step(self, stages, stage, plan.step, directory, instruction.line, link=True)
                changed(copied.digest)
                return directory
            with Sandbox(self.session, state.paths) as sandbox:
                copied = copy_step(self, stages, stage, plan.step, sandbox.rootfs, instruction.line)
                changed(copied.digest)
                return self._keep_changes(sandbox)

        def changed(digest: str) -> None:
            if plan.step.planned and digest != plan.step.planned:
                raise BuildFailed(
                    f"Dockerfile:{instruction.line}: files of the context changed while they were copied; "
                    "build again"
                )

        try:
            parent = state.key
            self._layer_step(state, key, created_by, make)
            if plan.link:
                state.key = step_key(parent, key)  # what follows depends on the parent all the same
        finally:
            self._drop_pending()
