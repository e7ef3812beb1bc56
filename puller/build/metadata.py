"""Instructions that change only the image config: ENV, LABEL, CMD, ENTRYPOINT and the rest.

Each returns the text its history entry and cache key record, so what the image says it
did is what was evaluated (variables expanded), in docker's spelling.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping

from .dockerfile import DockerfileError, Instruction, key_values, parse_duration, words

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PORT = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?", re.IGNORECASE)
SIGNAL = re.compile(r"(SIG)?[A-Z0-9+-]+|\d{1,2}", re.IGNORECASE)
MAX_PORT_RANGE = 1024


def env_dict(config: Mapping) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in config.get("Env") or [])


def command(instruction: Instruction, shell: list[str]) -> list[str]:
    """CMD, ENTRYPOINT and RUN arguments: the exec form as written, else the shell with the text."""
    if instruction.exec_form is not None:
        return list(instruction.exec_form)
    return [*shell, instruction.rest]


def apply(instruction: Instruction, config: dict, scope: Mapping[str, str], escape: str, image: dict) -> str:
    """Apply one config instruction to ``config`` (the image config's ``config``); its history text."""
    keyword = instruction.keyword
    if keyword == "ENV":
        env = env_dict(config)
        pairs = key_values(instruction, scope, escape)
        for key, value in pairs:
            if not ENV_NAME.fullmatch(key):
                raise DockerfileError(instruction.line, f"ENV: invalid variable name {key!r}")
            env.pop(key, None)
            env[key] = value or ""
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
        return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    if keyword == "LABEL":
        pairs = key_values(instruction, scope, escape)
        labels = dict(config.get("Labels") or {})
        for key, value in pairs:
            labels[key] = value or ""
        config["Labels"] = labels
        return "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
    if keyword in ("CMD", "ENTRYPOINT"):
        args = command(instruction, config_shell(config))
        name = "Cmd" if keyword == "CMD" else "Entrypoint"
        config[name] = args  # (the builder drops a CMD inherited from the base on a new ENTRYPOINT)
        return f"{keyword} {json.dumps(args)}"
    if keyword == "SHELL":
        if instruction.exec_form is None or not instruction.exec_form:
            raise DockerfileError(
                instruction.line, 'SHELL takes a JSON array, e.g. SHELL ["/bin/bash", "-c"]'
            )
        config["Shell"] = list(instruction.exec_form)
        return f"SHELL {json.dumps(config['Shell'])}"
    if keyword == "WORKDIR":
        path = _one(instruction, scope, escape)
        config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", path))
        return f"WORKDIR {config['WorkingDir']}"
    if keyword == "USER":
        user = _one(instruction, scope, escape)
        config["User"] = user
        return f"USER {user}"
    if keyword == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for word in words(instruction.rest, scope, escape, line=instruction.line):
            ports.update({port: {} for port in _ports(word, instruction.line)})
        config["ExposedPorts"] = ports
        return "EXPOSE " + " ".join(ports)
    if keyword == "VOLUME":
        paths = (
            list(instruction.exec_form)
            if instruction.exec_form is not None
            else words(instruction.rest, scope, escape, line=instruction.line)
        )
        if not paths or any(not p.strip() for p in paths):
            raise DockerfileError(instruction.line, "VOLUME needs at least one path")
        volumes = dict(config.get("Volumes") or {})
        volumes.update({path: {} for path in paths})
        config["Volumes"] = volumes
        return f"VOLUME {json.dumps(paths)}"
    if keyword == "STOPSIGNAL":
        signal = _one(instruction, scope, escape)
        if not SIGNAL.fullmatch(signal):
            raise DockerfileError(instruction.line, f"STOPSIGNAL: invalid signal {signal!r}")
        config["StopSignal"] = signal
        return f"STOPSIGNAL {signal}"
    if keyword == "HEALTHCHECK":
        config["Healthcheck"] = healthcheck(instruction, config_shell(config))
        return f"HEALTHCHECK {json.dumps(config['Healthcheck'])}"
    if keyword == "ONBUILD":
        text = instruction.original.split(None, 1)[1]
        config["OnBuild"] = [*(config.get("OnBuild") or []), text]
        return f"ONBUILD {text}"
    if keyword == "MAINTAINER":
        image["author"] = instruction.rest
        return f"MAINTAINER {instruction.rest}"
    raise DockerfileError(instruction.line, f"{keyword} is not a config instruction")  # a caller's bug


def config_shell(config: Mapping) -> list[str]:
    return list(config.get("Shell") or ["/bin/sh", "-c"])


def _one(instruction: Instruction, scope: Mapping[str, str], escape: str) -> str:
    parts = words(instruction.rest, scope, escape, line=instruction.line)
    if len(parts) != 1:
        raise DockerfileError(instruction.line, f"{instruction.keyword} takes exactly one argument")
    return parts[0]


def _ports(word: str, line: int) -> list[str]:
    match = PORT.fullmatch(word)
    if not match:
        raise DockerfileError(line, f"EXPOSE: invalid port {word!r}: use PORT[/tcp|udp|sctp] or a range")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    protocol = (match.group(3) or "tcp").lower()
    if not 0 < first <= last <= 65535 or last - first >= MAX_PORT_RANGE:
        raise DockerfileError(line, f"EXPOSE: invalid port range {word!r}")
    return [f"{port}/{protocol}" for port in range(first, last + 1)]


def healthcheck(instruction: Instruction, shell: list[str]) -> dict:
    line = instruction.line
    rest = instruction.rest
    head, _, tail = rest.partition(" ")
    if head.upper() == "NONE":
        if tail.strip() or instruction.flags:
            raise DockerfileError(line, "HEALTHCHECK NONE takes no other arguments")
        return {"Test": ["NONE"]}
    if head.upper() != "CMD" or not tail.strip():
        raise DockerfileError(line, "HEALTHCHECK takes NONE or [OPTIONS] CMD command")
    exec_form = None
    try:
        parsed = json.loads(tail)
        if isinstance(parsed, list) and parsed and all(isinstance(p, str) for p in parsed):
            exec_form = parsed
    except ValueError:
        pass
    check: dict[str, object] = {"Test": ["CMD", *exec_form] if exec_form else ["CMD-SHELL", tail.strip()]}
    names = {
        "interval": "Interval",
        "timeout": "Timeout",
        "start-period": "StartPeriod",
        "start-interval": "StartInterval",
    }
    for flag, field in names.items():
        if (value := instruction.flag(flag)) is not None:
            check[field] = parse_duration(value, line)
    if (retries := instruction.flag("retries")) is not None:
        if not retries.isdigit():
            raise DockerfileError(line, f"HEALTHCHECK --retries={retries!r}: a whole number")
        check["Retries"] = int(retries)
    del shell  # CMD-SHELL runs the image's shell at check time, as docker does
    return check
