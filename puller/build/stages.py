"""Stages of a multi-stage Dockerfile, and which of them a target needs.

Only the stages the target depends on are built (BuildKit's rule, not the classic
builder's): a stage is needed when the target is built ``FROM`` it, copies ``--from`` it,
or mounts it in a ``RUN --mount=from=``, transitively.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .dockerfile import Dockerfile, DockerfileError, Instruction, expand, parse_flag_options, words


@dataclass(frozen=True)
class Stage:
    index: int
    name: str  # lower case, as docker compares them; "" when the stage has no AS
    base: str  # the FROM image (global args expanded): an image reference, a stage, or scratch
    platform: str | None
    source: Instruction  # the FROM line
    instructions: tuple[Instruction, ...]

    @property
    def label(self) -> str:
        return self.name or str(self.index)


def split(dockerfile: Dockerfile, global_args: Mapping[str, str]) -> tuple[list[Instruction], list[Stage]]:
    """The ARGs before the first FROM, and the stages."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    current: Instruction | None = None
    body: list[Instruction] = []

    def close() -> None:
        if current is None:
            return
        parts = words(current.rest, global_args, dockerfile.escape, line=current.line)
        if len(parts) == 3 and parts[1].lower() == "as":
            image, name = parts[0], parts[2].lower()
        elif len(parts) == 1:
            image, name = parts[0], ""
        else:
            raise DockerfileError(current.line, "FROM takes an image and optionally AS name")
        if name and (name.isdigit() or any(stage.name == name for stage in stages)):
            raise DockerfileError(current.line, f"stage name {name!r} is a number or already used")
        platform = current.flag("platform")
        stages.append(Stage(len(stages), name, image, platform or None, current, tuple(body)))

    for instruction in dockerfile.instructions:
        if instruction.keyword == "FROM":
            close()
            current, body = instruction, []
        elif current is None:
            preamble.append(instruction)
        else:
            body.append(instruction)
    close()
    return preamble, stages


def find(stages: list[Stage], name: str, before: int) -> Stage | None:
    """The stage ``name`` (a name or an index) refers to from stage ``before``; None: an image."""
    for stage in stages[:before]:
        if stage.name == name.lower() or str(stage.index) == name:
            return stage
    return None


def dependencies(stages: list[Stage], stage: Stage, env: Mapping[str, str], escape: str) -> set[int]:
    """The stages ``stage`` reads directly."""
    found = set()
    if (base := find(stages, stage.base, stage.index)) is not None:
        found.add(base.index)
    for instruction in stage.instructions:
        names = []
        if instruction.keyword in ("COPY", "ADD") and instruction.flag("from"):
            names.append(instruction.flag("from") or "")
        if instruction.keyword == "RUN":
            for mount in instruction.flag_values("mount"):
                if source := parse_flag_options(mount).get("from"):
                    names.append(source)
        for name in names:
            if (
                other := find(stages, expand(name, env, escape, line=instruction.line), stage.index)
            ) is not None:
                found.add(other.index)
    return found


def needed(stages: list[Stage], target: str | None, env: Mapping[str, str], escape: str) -> list[Stage]:
    """The stages to build for ``target`` (default: the last), in Dockerfile order."""
    if not stages:
        raise DockerfileError(1, "no FROM instruction")
    if target:
        chosen = find(stages, target, len(stages))
        if chosen is None:
            names = ", ".join(s.name for s in stages if s.name) or "none"
            raise DockerfileError(1, f"--target {target!r}: no such stage (named stages: {names})")
    else:
        chosen = stages[-1]
    wanted = {chosen.index}
    pending = [chosen]
    while pending:
        for index in dependencies(stages, pending.pop(), env, escape):
            if index not in wanted:
                wanted.add(index)
                pending.append(stages[index])
    return [stage for stage in stages if stage.index in wanted]
