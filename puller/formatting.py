"""``--format``: a small, safe subset of Go's text/template, as docker's ``--format`` takes it.

Supported, and nothing else (no eval, no attribute access on Python objects: only keys
of the JSON data and indexes of its lists are ever looked up):

- text outside ``{{ }}`` is printed as it is;
- ``{{.}}`` the whole item; ``{{.Field.Sub}}`` a path of keys (exact, case-sensitive);
- functions ``json X`` (compact JSON), ``index X K...`` (a key, or a list's position),
  ``join X SEP`` (a list's items joined), ``len X``, ``upper X``, ``lower X``;
- arguments: field paths, ``"strings"`` (JSON's escapes), `` `raw strings` ``, integers;
- pipelines: ``{{.Config | json}}`` passes the value on as the last argument.

A value prints as Go prints it: lists as ``[a b]``, objects as ``map[k:v]``, null as
``<nil>``. An unknown field or function, or a malformed template, is an error naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PierError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<field>\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<number>-?[0-9]+)
      | (?P<pipe>\|)
    )\s*""",
    re.VERBOSE,
)


class FormatError(PierError):
    """A ``--format`` template that cannot be applied; the message names what is wrong."""


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]


_Argument = _Field | str | int
_Command = tuple[str | None, list[_Argument]]  # (function or None for a lone value, arguments)


def go_string(value: object) -> str:
    """``value`` as Go's fmt prints it with ``%v``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(go_string(item) for item in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_string(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _lookup(data: object, path: tuple[str, ...]) -> object:
    value = data
    for depth, key in enumerate(path):
        where = "." + ".".join(path[:depth]) if depth else "the top level"
        if not isinstance(value, dict):
            raise FormatError(f"--format: .{'.'.join(path)}: {where} has no fields ({go_string(value)[:60]})")
        if key not in value:
            fields = ", ".join(sorted(value)) or "none"
            raise FormatError(f"--format: no field {key!r} at {where} (fields: {fields})")
        value = value[key]
    return value


def _index(value: object, *keys: object) -> object:
    for key in keys:
        if isinstance(value, dict) and isinstance(key, str):
            if key not in value:
                raise FormatError(f"--format: index: no key {key!r}")
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(value):
                raise FormatError(f"--format: index: {key} is out of range (length {len(value)})")
            value = value[key]
        else:
            raise FormatError(f"--format: index: cannot index {type(value).__name__} with {key!r}")
    return value


def _join(value: object, separator: object) -> str:
    if not isinstance(value, list) or not isinstance(separator, str):
        raise FormatError("--format: join takes a list and a string")
    return separator.join(go_string(item) for item in value)


def _len(value: object) -> int:
    if not isinstance(value, (list, dict, str)):
        raise FormatError(f"--format: len of {type(value).__name__}")
    return len(value)


def _text(function: Callable[[str], str]) -> Callable[[object], str]:
    return lambda value: function(go_string(value))


FUNCTIONS: dict[str, tuple[Callable[..., object], int, int]] = {  # name: (function, min, max args)
    "json": (lambda value: json.dumps(value, ensure_ascii=False, separators=(",", ":")), 1, 1),
    "index": (_index, 2, 16),
    "join": (_join, 2, 2),
    "len": (_len, 1, 1),
    "upper": (_text(str.upper), 1, 1),
    "lower": (_text(str.lower), 1, 1),
}


def _parse_action(source: str) -> list[_Command]:
    """One ``{{ }}`` action as a pipeline of commands."""
    commands: list[_Command] = [(None, [])]
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            raise FormatError(f"--format: cannot read {source[position:][:30]!r} in {{{{{source}}}}}")
        position = match.end()
        function, arguments = commands[-1]
        if match.group("pipe"):
            if function is None and not arguments:
                raise FormatError(f"--format: '|' with nothing before it in {{{{{source}}}}}")
            commands.append((None, []))
        elif match.group("name"):
            name = match.group("name")
            if name not in FUNCTIONS:
                raise FormatError(f"--format: unknown function {name!r} (functions: {', '.join(FUNCTIONS)})")
            if function is not None or arguments:
                raise FormatError(f"--format: function {name!r} must come first in {{{{{source}}}}}")
            commands[-1] = (name, [])
        elif match.group("field") is not None:
            arguments.append(_Field(tuple(p for p in match.group("field").split(".") if p)))
        elif match.group("string"):
            try:
                arguments.append(json.loads(match.group("string")))
            except ValueError:
                raise FormatError(f"--format: bad string {match.group('string')}") from None
        elif match.group("raw"):
            arguments.append(match.group("raw")[1:-1])
        else:
            arguments.append(int(match.group("number")))
    if not commands[0][0] and not commands[0][1]:
        raise FormatError("--format: empty action {{}}")
    for function, arguments in commands:
        if function is None and len(arguments) != 1:
            raise FormatError(f"--format: expected one value or a function in {{{{{source}}}}}")
    return commands


def _run(commands: list[_Command], data: object) -> object:
    value: object = None
    for position, (function, arguments) in enumerate(commands):
        values = [_lookup(data, a.path) if isinstance(a, _Field) else a for a in arguments]
        if position:
            values.append(value)  # a pipeline passes its value as the last argument
        if function is None:
            if len(values) != 1:
                raise FormatError("--format: a value piped into a value: use a function after '|'")
            value = values[0]
            continue
        call, least, most = FUNCTIONS[function]
        if not least <= len(values) <= most:
            wanted = str(least) if least == most else f"{least} to {most}"
            plural = "" if wanted == "1" else "s"
            raise FormatError(f"--format: {function} takes {wanted} argument{plural}, got {len(values)}")
        value = call(*values)
    return value


class Template:
    """A parsed ``--format``: parse once, render once per item (image, container, inspect)."""

    def __init__(self, source: str) -> None:
        self.parts: list[str | list[_Command]] = []
        position = 0
        while True:
            start = source.find("{{", position)
            if start < 0:
                if "}}" in source[position:]:
                    raise FormatError("--format: '}}' without '{{'")
                self.parts.append(source[position:])
                break
            if "}}" in source[position:start]:
                raise FormatError("--format: '}}' without '{{'")
            end = source.find("}}", start + 2)
            if end < 0:
                raise FormatError(f"--format: '{{{{' at position {start} is never closed with '}}}}'")
            self.parts.append(source[position:start])
            self.parts.append(_parse_action(source[start + 2 : end].strip()))
            position = end + 2

    def render(self, data: object) -> str:
        return "".join(part if isinstance(part, str) else go_string(_run(part, data)) for part in self.parts)
