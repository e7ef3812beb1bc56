"""The Dockerfile language, as docker's buildkit frontend reads it: a pure parser, no I/O.

``parse`` turns the text into instructions (directives, comments, continuations, heredocs,
flags and the JSON exec form resolved, each checked as buildkit checks it, with its line);
``expand``, ``words``, ``key_values`` and ``arg_values`` apply buildkit's shell-lexer rules to
an instruction's arguments once the builder knows the variables in scope.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction

from ..errors import PierError

__all__ = [
    "Dockerfile",
    "DockerfileError",
    "Heredoc",
    "Instruction",
    "Stage",
    "arg_values",
    "expand",
    "key_values",
    "parse",
    "parse_duration",
    "parse_flag_options",
    "words",
]


class DockerfileError(PierError):
    """One line for the user: 'Dockerfile:LINE: message'."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"Dockerfile:{line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Heredoc:
    """A ``<<NAME`` body, every line ending in "\\n" (CRLF read as LF); already tab-stripped
    when ``chomp`` (``<<-NAME``). For COPY/ADD with ``expand``, docker expands it with
    ``expand(content, env, quotes=False)``; a RUN script is left to the shell."""

    name: str
    content: str
    expand: bool
    chomp: bool


@dataclass(frozen=True)
class Instruction:
    """One instruction, its flags split off and checked; arguments left for ``expand``/``words``."""

    keyword: str
    line: int
    original: str
    flags: tuple[tuple[str, str | None], ...]
    rest: str
    exec_form: tuple[str, ...] | None
    heredocs: tuple[Heredoc, ...] = ()
    trigger: Instruction | None = None

    def flag(self, name: str) -> str | None:
        """The last value of ``--name``: None when absent, "" for a bare ``--name``."""
        values = self.flag_values(name)
        return values[-1] if values else None

    def flag_values(self, name: str) -> list[str]:
        """Every value of a repeatable flag (``--mount``), in order."""
        return [value or "" for key, value in self.flags if key == name]

    def bool_flag(self, name: str) -> bool:
        """A boolean flag as docker reads it: ``--link`` and ``--link=true`` are on."""
        value = self.flag(name)
        return value is not None and value.lower() != "false"


@dataclass(frozen=True)
class Stage:
    """A FROM and the instructions up to the next one; ``name`` lower-cased, as docker does."""

    index: int
    name: str | None
    base: str  # the image as written: expand it with the meta ARGs
    start: Instruction
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    """A parsed file: the escape character its expansions must use, and every instruction."""

    escape: str
    instructions: tuple[Instruction, ...]

    def meta_args(self) -> tuple[Instruction, ...]:
        """The ARGs before the first FROM: the only variables a FROM line can use."""
        starts = self._starts()
        return self.instructions[: starts[0] if starts else len(self.instructions)]

    def stages(self) -> tuple[Stage, ...]:
        """The build stages in order (``parse`` refused a file without one)."""
        starts = self._starts()
        stages = []
        for index, (first, end) in enumerate(zip(starts, [*starts[1:], len(self.instructions)], strict=True)):
            start = self.instructions[first]
            args = start.rest.split()
            name = args[2].lower() if len(args) == 3 else None
            stages.append(Stage(index, name, args[0], start, self.instructions[first + 1 : end]))
        return tuple(stages)

    def _starts(self) -> list[int]:
        return [i for i, instruction in enumerate(self.instructions) if instruction.keyword == "FROM"]


# --- the file -----------------------------------------------------------------------------

_KEYWORDS = frozenset(
    {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT"}
    | {"VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
)
_JSON_KEYWORDS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
_HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_VALUE, _MANY, _BOOL, _REFUSED = "value", "many", "bool", "refused"  # kinds of flag
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": _VALUE},
    "RUN": {"mount": _MANY, "network": _VALUE, "security": _REFUSED, "device": _REFUSED},
    "COPY": {"from": _VALUE, "chown": _VALUE, "chmod": _VALUE, "link": _BOOL}
    | {"parents": _REFUSED, "exclude": _REFUSED},
    "ADD": {"chown": _VALUE, "chmod": _VALUE, "link": _BOOL, "checksum": _VALUE}
    | {"keep-git-dir": _REFUSED, "exclude": _REFUSED, "unpack": _REFUSED},
    "HEALTHCHECK": dict.fromkeys(
        ["interval", "timeout", "start-period", "start-interval", "retries"], _VALUE
    ),
}
_NETWORKS = ("default", "none", "host")
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*\Z", re.ASCII)
_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_BLANKS = re.compile(r"[\t\v\f\r ]+")  # what buildkit splits an instruction line on
_HEREDOC = re.compile(r"(\d*)<<(-?)([^<]+)\Z")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")


def parse(text: str) -> Dockerfile:
    """Parse a whole Dockerfile; the first problem found raises ``DockerfileError``."""
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line starts no line of its own
    escape = "\\"
    directives: set[str] | None = set()  # None once past the leading directives
    instructions: list[Instruction] = []
    index = 0
    while index < len(lines):
        start, stripped = index + 1, lines[index].lstrip()
        index += 1
        if directives is not None:
            match = _DIRECTIVE.match(stripped)
            if match and match[1].lower() in _DIRECTIVES:
                escape = _directive(match[1].lower(), match[2], directives, start, escape)
                continue
            directives = None
        if not stripped or stripped.startswith("#"):
            continue
        # an escape ending the line (trailing blanks allowed) continues it, unless itself escaped
        continued = re.compile(rf"(?:^|(?<=[^{re.escape(escape)}])){re.escape(escape)}[ \t]*\Z")
        joined, more = continued.subn("", stripped)
        while more and index < len(lines):
            line = lines[index]
            index += 1
            if line.strip() and not line.lstrip().startswith("#"):  # comments and blanks vanish
                part, more = continued.subn("", line)
                joined += part
        if not joined.strip():
            continue
        instruction = _instruction(joined.strip(), start, escape)
        target = instruction.trigger or instruction
        if target.keyword in _HEREDOC_KEYWORDS and target.exec_form is None:
            heredocs = []
            for name, expands, chomp in _heredoc_markers(target.rest, start):
                body, index = _heredoc_body(lines, index, name, chomp, start)
                heredocs.append(Heredoc(name, body, expands, chomp))
            if heredocs:
                target = replace(target, heredocs=tuple(heredocs))
                instruction = replace(instruction, trigger=target) if instruction.trigger else target
        instructions.append(instruction)
    _check_order(instructions)
    return Dockerfile(escape, tuple(instructions))


def _directive(key: str, value: str, seen: set[str], line: int, escape: str) -> str:
    """Record one parser directive; the escape character in force after it."""
    if key in seen:
        raise DockerfileError(line, f"only one {key} parser directive can be used")
    seen.add(key)
    if key != "escape":
        return escape  # syntax= and check= name frontends and linters pier does not have
    if value not in ("\\", "`"):
        raise DockerfileError(line, f"invalid escape token {value!r}: it must be \\ or `")
    return value


def _check_order(instructions: list[Instruction]) -> None:
    """Only ARG before the first FROM, at least one FROM, and no stage name used twice."""
    names: set[str] = set()
    seen_from = False
    for instruction in instructions:
        if instruction.keyword == "FROM":
            seen_from = True
            args = instruction.rest.split()
            if len(args) == 3 and args[2].lower() in names:
                raise DockerfileError(instruction.line, f"duplicate stage name {args[2]!r}")
            names.update(arg.lower() for arg in args[2:])
        elif not seen_from and instruction.keyword != "ARG":
            raise DockerfileError(
                instruction.line, f"{instruction.keyword} before the first FROM: only ARG may come first"
            )
    if not seen_from:
        raise DockerfileError(1, "no FROM instruction")


def _heredoc_body(lines: list[str], index: int, name: str, chomp: bool, start: int) -> tuple[str, int]:
    """The body from ``index`` up to the line reading ``name``, and the index after that line."""
    body: list[str] = []
    while index < len(lines):
        line = lines[index].lstrip("\t") if chomp else lines[index]
        index += 1
        if line == name:
            return "".join(body), index
        body.append(line + "\n")
    raise DockerfileError(start, f"unterminated heredoc <<{name}: no line reads {name}")


def _heredoc_markers(rest: str, line: int) -> list[tuple[str, bool, bool]]:
    """(name, expand, chomp) of each ``<<NAME`` word, in order; a quoted name expands nothing."""
    markers = []
    for word in _raw_words(rest, "\\"):
        match = _HEREDOC.match(word)
        if match:
            name, quoted = _unquote(match[3], line)
            if name:
                markers.append((name, not quoted, match[2] == "-"))
    return markers


def _unquote(word: str, line: int) -> tuple[str, bool]:
    """A heredoc name without its quotes and backslashes, and whether it had quotes."""
    out: list[str] = []
    quoted, i = False, 0
    while i < len(word):
        ch = word[i]
        if ch in "'\"":
            end = word.find(ch, i + 1)
            if end < 0:
                raise DockerfileError(line, f"unterminated quote in heredoc <<{word}")
            out.append(word[i + 1 : end])
            quoted, i = True, end + 1
        elif ch == "\\" and i + 1 < len(word):
            out.append(word[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out), quoted


def _instruction(text: str, line: int, escape: str) -> Instruction:
    """Split ``KEYWORD --flags rest`` and check it; ``parse`` attaches any heredoc bodies."""
    head, *tail = _BLANKS.split(text, maxsplit=1)
    keyword = head.upper() if head.isascii() else head
    if keyword not in _KEYWORDS:
        raise DockerfileError(line, f"unknown instruction: {head.upper()}")
    raw_flags, rest = _split_flags(tail[0] if tail else "")
    flags = _check_flags(keyword, raw_flags, line)
    exec_form = _json_array(rest, keyword, line) if keyword in _JSON_KEYWORDS else None
    parts = rest.split(maxsplit=1)
    if keyword == "HEALTHCHECK" and len(parts) == 2 and parts[0].upper() == "CMD":
        exec_form = _json_array(parts[1], keyword, line)
    trigger = None
    if keyword == "ONBUILD" and parts:
        inner = parts[0].upper()
        if inner == "ONBUILD":
            raise DockerfileError(line, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if inner in ("FROM", "MAINTAINER"):
            raise DockerfileError(line, f"{inner} isn't allowed as an ONBUILD trigger")
        trigger = _instruction(rest, line, escape)
    instruction = Instruction(keyword, line, text, flags, rest, exec_form, (), trigger)
    _check_arguments(instruction, escape)
    return instruction


def _split_flags(text: str) -> tuple[list[str], str]:
    """The leading ``--flag`` words (quotes and backslashes removed, as buildkit does) and the
    rest; a lone ``--`` ends the flags."""
    flags: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if not text.startswith("--", i):
            return flags, text[i:].strip()
        word: list[str] = []
        quote = ""
        while i < n and (quote or not text[i].isspace()):
            ch = text[i]
            i += 1
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            elif ch == "\\":
                word.append(text[i : i + 1])  # nothing when it ends the line
                i += 1
            else:
                word.append(ch)
        if "".join(word) == "--":
            return flags, text[i:].strip()
        flags.append("".join(word))


def _check_flags(keyword: str, raw: list[str], line: int) -> tuple[tuple[str, str | None], ...]:
    """``--name=value`` words as (name, value), value None for a bare ``--name``; only the
    flags docker knows for the instruction, those pier implements, each once (but --mount)."""
    allowed = _FLAGS.get(keyword, {})
    flags: list[tuple[str, str | None]] = []
    for word in raw:
        name, equals, value = word[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise DockerfileError(line, f"{keyword} does not support the flag --{name}")
        if kind == _REFUSED:
            raise DockerfileError(line, f"{keyword} --{name} is not supported by pier")
        if kind == _BOOL and equals and value.lower() not in ("true", "false"):
            raise DockerfileError(line, f"{keyword} --{name} takes true or false, not {value!r}")
        if kind != _BOOL and not value:
            raise DockerfileError(line, f"{keyword} --{name} needs a value: --{name}=VALUE")
        if kind != _MANY and any(name == seen for seen, _ in flags):
            raise DockerfileError(line, f"{keyword} --{name} is given more than once")
        if name == "network" and value not in _NETWORKS:
            raise DockerfileError(line, f"RUN --network must be default, none or host, not {value!r}")
        if keyword == "HEALTHCHECK":
            _check_health_flag(name, value, line)
        flags.append((name, value if equals else None))
    return tuple(flags)


def _check_health_flag(name: str, value: str, line: int) -> None:
    """Durations of at least 1ms (0 meaning docker's default) and a count of retries."""
    if name != "retries":
        if 0 < parse_duration(value, line) < 1_000_000:
            raise DockerfileError(line, f"HEALTHCHECK --{name} cannot be less than 1ms")
    elif not re.fullmatch(r"\+?[0-9]{1,10}", value) or int(value) > 2**31 - 1:
        raise DockerfileError(line, f"HEALTHCHECK --retries must be a count from 0, not {value!r}")


def _no_constant(name: str) -> object:
    raise ValueError(name)


def _json_array(text: str, keyword: str, line: int) -> tuple[str, ...] | None:
    """The exec form: text that parses as a JSON array; an array of anything but strings is an
    error, text that does not parse is the shell form (docker's rule)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DockerfileError(line, f"{keyword}: a JSON array must hold strings only")
    try:
        "".join(value).encode()
    except UnicodeEncodeError:
        raise DockerfileError(line, f"{keyword}: the JSON array holds an invalid \\u escape") from None
    return tuple(value)


def _check_arguments(instruction: Instruction, escape: str) -> None:
    """What buildkit checks of an instruction's arguments before any variable is known."""
    keyword, rest, form, line = instruction.keyword, instruction.rest, instruction.exec_form, instruction.line
    if keyword in ("COPY", "ADD"):
        args = list(form) if form is not None else _raw_words(rest, escape)
        if len(args) < 2:
            raise DockerfileError(
                line, f"{keyword} requires at least two arguments: sources and a destination"
            )
        if form is None and _HEREDOC.match(args[-1]):
            raise DockerfileError(line, f"{keyword} cannot take a heredoc as its destination")
    elif not rest or (form == () and keyword in ("RUN", "SHELL", "VOLUME")):
        raise DockerfileError(line, f"{keyword} requires at least one argument")
    elif keyword == "FROM":
        args = rest.split()
        if len(args) == 3 and args[1].lower() == "as":
            if not _STAGE_NAME.match(args[2].lower()):
                raise DockerfileError(
                    line,
                    f"invalid name for build stage: {args[2]!r}, it must start with a letter"
                    " and hold only letters, digits, '-', '_' and '.'",
                )
        elif len(args) != 1:
            raise DockerfileError(line, "FROM requires either one or three arguments: FROM image [AS name]")
    elif keyword == "SHELL" and form is None:
        raise DockerfileError(line, 'SHELL requires the JSON form: SHELL ["executable", "parameters"]')
    elif keyword == "VOLUME" and form is not None and not all(path.strip() for path in form):
        raise DockerfileError(line, "VOLUME paths cannot be empty")
    elif keyword == "HEALTHCHECK":
        kind, *command = rest.split(maxsplit=1)
        if kind.upper() == "NONE" and command:
            raise DockerfileError(line, "HEALTHCHECK NONE takes no arguments")
        if kind.upper() not in ("NONE", "CMD"):
            raise DockerfileError(line, f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
        if kind.upper() == "CMD" and (not command or form == ()):
            raise DockerfileError(line, "HEALTHCHECK CMD needs a command")
    elif keyword in ("ENV", "LABEL", "ARG"):
        _raw_pairs(instruction, escape)


def _raw_words(text: str, escape: str) -> list[str]:
    """Words split on unquoted blanks, quotes and escapes kept (buildkit's ``parseWords``)."""
    found: list[str] = []
    word: list[str] = []
    quote = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if not quote and ch.isspace():
            if word:
                found.append("".join(word))
                word = []
            continue
        if ch == escape and quote != "'":
            if i == n:
                break  # an escape ending the text is dropped
            word.append(ch)
            ch = text[i]
            i += 1
        elif not quote and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = ""
        word.append(ch)
    if word:
        found.append("".join(word))
    return found


def _raw_pairs(instruction: Instruction, escape: str) -> list[tuple[str, str | None]]:
    """Unexpanded (key, value) pairs of ENV, LABEL (value never None) or ARG (None: no default)."""
    keyword, line = instruction.keyword, instruction.line
    found = _raw_words(instruction.rest, escape)
    if keyword == "ARG":
        pairs = [(key, value if equals else None) for key, equals, value in (w.partition("=") for w in found)]
    elif found and "=" not in found[0]:  # the legacy ENV NAME value with spaces
        parts = _BLANKS.split(instruction.rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(line, f"{keyword} {parts[0]} needs a value: {keyword} {parts[0]}=VALUE")
        pairs = [(parts[0], parts[1])]
    else:
        for word in found:
            if "=" not in word:
                raise DockerfileError(line, f"{keyword}: can't find = in {word!r}; it must be name=value")
        pairs = [(key, value) for key, _, value in (word.partition("=") for word in found)]
    if not pairs or not all(key for key, _ in pairs):
        raise DockerfileError(line, f"{keyword} names can not be blank")
    return pairs


# --- words and variables --------------------------------------------------------------------


def expand(
    word: str,
    env: Mapping[str, str],
    escape: str = "\\",
    *,
    lenient_missing: bool = True,
    quotes: bool = True,
    line: int = 0,
) -> str:
    """One word with quotes removed and variables expanded, blanks kept (buildkit's
    ``ProcessWord``). An unset variable is "" unless ``lenient_missing`` is False, which makes
    a plain ``$X``/``${X}``/pattern reference an error (``${X:-d}`` and the like stay valid).
    ``quotes=False`` leaves quotes as text (heredoc bodies). Errors carry ``line``."""
    return _lex(word, env, escape, lenient_missing, quotes, line)[0]


def words(text: str, env: Mapping[str, str], escape: str = "\\", *, line: int = 0) -> list[str]:
    """The words of ``text`` split on unquoted blanks after expansion, as buildkit's
    ``ProcessWords`` does (``EXPOSE 80 443/tcp``, ``COPY a b /dest/``); empty words vanish."""
    return _lex(text, env, escape, True, True, line)[1]


def key_values(instruction: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    """ENV or LABEL pairs, keys and values expanded against ``env`` as it was before the
    instruction: a pair does not see one set earlier on the same line (docker's rule)."""
    if instruction.keyword not in ("ENV", "LABEL"):
        raise ValueError(f"key_values reads ENV and LABEL, not {instruction.keyword}")
    pairs = []
    for raw_key, raw_value in _raw_pairs(instruction, escape):
        key = _expand_key(instruction, raw_key, env, escape)
        pairs.append((key, expand(raw_value or "", env, escape, line=instruction.line)))
    return pairs


def arg_values(
    instruction: Instruction, env: Mapping[str, str], escape: str = "\\"
) -> list[tuple[str, str | None]]:
    """ARG names and their expanded defaults, None where the ARG has no default."""
    if instruction.keyword != "ARG":
        raise ValueError(f"arg_values reads ARG, not {instruction.keyword}")
    return [
        (
            _expand_key(instruction, key, env, escape),
            None if value is None else expand(value, env, escape, line=instruction.line),
        )
        for key, value in _raw_pairs(instruction, escape)
    ]


def _expand_key(instruction: Instruction, raw: str, env: Mapping[str, str], escape: str) -> str:
    """A key expanded; ENV and ARG names must make ``NAME=value`` entries."""
    key = expand(raw, env, escape, line=instruction.line)
    if not key:
        raise DockerfileError(instruction.line, f"{instruction.keyword} names can not be blank")
    if instruction.keyword != "LABEL" and any(ch.isspace() or ch in "=\0" for ch in key):
        raise DockerfileError(instruction.line, f"{instruction.keyword} name {key!r} is not valid")
    return key


def _lex(
    text: str, env: Mapping[str, str], escape: str, lenient: bool, quotes: bool, line: int
) -> tuple[str, list[str]]:
    lexer = _Lexer(text, env, escape, lenient, quotes, line)
    try:
        return lexer.scan()
    except RecursionError:  # ${A:-${B:-...}} thousands deep
        raise lexer.error("substitutions nested too deeply") from None


class _Lexer:
    """buildkit's shell-word rules over one text: quotes, escapes, ``$X`` and ``${X...}``."""

    def __init__(
        self, text: str, env: Mapping[str, str], escape: str, lenient: bool, quotes: bool, line: int
    ) -> None:
        self.text, self.env, self.escape = text, env, escape
        self.lenient, self.quotes, self.line = lenient, quotes, line
        self.pos = 0

    def error(self, message: str) -> DockerfileError:
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return DockerfileError(self.line, f"cannot expand {shown!r}: {message}")

    def scan(self, stop: str = "", raw: bool = False) -> tuple[str, list[str]]:
        """Up to ``stop`` (consumed) or the end: the word, and it split into words. ``raw``
        keeps escapes, for patterns."""
        text, n = self.text, len(self.text)
        result: list[str] = []
        found: list[str] = []
        word: list[str] = []

        def end_word() -> None:
            if "".join(word):
                found.append("".join(word))
            word.clear()

        def split(piece: str) -> None:  # expansions and plain text split on blanks
            for ch in piece:
                if ch.isspace():
                    end_word()
                else:
                    word.append(ch)

        while self.pos < n:
            ch = text[self.pos]
            if stop and ch == stop:
                self.pos += 1
                end_word()
                return "".join(result), found
            if ch == "$":
                piece = self.dollar()
                split(piece)
            elif self.quotes and ch in "'\"":
                piece = self.single() if ch == "'" else self.double(raw)
                word.append(piece)
            else:
                self.pos += 1
                piece = ch
                if ch == self.escape:
                    piece = ch if raw else ""
                    if self.pos == n:
                        result.append(piece)
                        word.append(piece)
                        break  # an escape ending the text is dropped
                    piece += text[self.pos]
                    self.pos += 1
                    word.append(piece)
                else:
                    split(ch)
            result.append(piece)
        if stop:
            raise self.error(f"missing {stop!r}")
        end_word()
        return "".join(result), found

    def single(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0:
            raise self.error("unterminated single quote")
        piece, self.pos = self.text[self.pos + 1 : end], end + 1
        return piece

    def double(self, raw: bool) -> str:
        """Inside "...": ``$`` expands; the escape escapes only ``"``, ``$`` and itself."""
        text, n = self.text, len(self.text)
        out: list[str] = []
        self.pos += 1
        while self.pos < n:
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.pos += 1
            if ch == self.escape:
                if raw:
                    out.append(ch)
                if self.pos < n and text[self.pos] in ('"', "$", self.escape):
                    ch = text[self.pos]
                    self.pos += 1
            out.append(ch)
        raise self.error("unterminated double quote")

    def name(self) -> str:
        """A variable name: digits, one special character, or letters, digits and _."""
        text, start = self.text, self.pos
        if self.pos < len(text) and text[self.pos].isdecimal():
            while self.pos < len(text) and text[self.pos].isdecimal():
                self.pos += 1
        elif self.pos < len(text) and text[self.pos] in "@*#?-$!":
            self.pos += 1
        else:
            while self.pos < len(text) and (text[self.pos].isalnum() or text[self.pos] == "_"):
                self.pos += 1
        return text[start : self.pos]

    def value(self, name: str) -> str:
        found = self.env.get(name)
        if found is None and not self.lenient:
            raise self.error(f"{name} is not set")
        return found or ""

    def next_char(self) -> str:
        if self.pos >= len(self.text):
            raise self.error("missing '}'")
        self.pos += 1
        return self.text[self.pos - 1]

    def dollar(self) -> str:
        self.pos += 1
        if not self.text.startswith("{", self.pos):
            name = self.name()
            return self.value(name) if name else "$"
        self.pos += 1
        if self.text[self.pos : self.pos + 1] in ("{", "}", ":"):
            raise self.error("bad substitution")
        name = self.name()
        op = self.next_char()
        if op == "}":
            return self.value(name)
        if op == "/":
            return self.substitute(name)
        colon = op == ":"
        if colon:
            op = self.next_char()
        if op not in "+-?#%" or (colon and op in "#%"):
            raise self.error(f"unsupported modifier ({':' * colon}{op}) in substitution")
        word = self.scan("}", raw=op in "#%")[0]
        found = self.env.get(name)
        unset = found is None or (colon and found == "")
        if op == "-":
            return word if unset else found or ""
        if op == "+":
            return "" if unset else word
        if op == "?":
            if unset:
                default = "is not allowed to be unset" if found is None else "is not allowed to be empty"
                raise self.error(f"{name}: {word or default}")
            return found or ""
        value = self.value(name)
        greedy = word.startswith(op)
        pieces = self.pattern(word[1:] if greedy else word, greedy)
        if op == "#":
            match = re.match("".join(pieces), value, re.DOTALL)
            return value[match.end() :] if match else value
        match = re.match("".join(reversed(pieces)), value[::-1], re.DOTALL)  # % trims from the end
        return value[: len(value) - match.end()] if match else value

    def substitute(self, name: str) -> str:
        """``${X/pattern/text}`` replaces the first (longest) match, ``${X//pattern/text}`` all."""
        every = self.text.startswith("/", self.pos)
        if every:
            self.pos += 1
        pattern = self.scan("/", raw=True)[0]
        replacement = self.scan("}")[0]
        value = self.value(name)
        if not pattern:
            return value
        regex = re.compile("".join(self.pattern(pattern, greedy=True)), re.DOTALL)
        return regex.sub(lambda _: replacement, value, count=0 if every else 1)

    def pattern(self, glob: str, greedy: bool) -> list[str]:
        """A shell pattern (``*``, ``?``, escaped characters) as regex pieces, one per character."""
        pieces: list[str] = []
        i = 0
        while i < len(glob):
            ch = glob[i]
            i += 1
            if ch == self.escape and i < len(glob):
                pieces.append(re.escape(glob[i]))
                i += 1
            elif ch == "*":
                pieces.append(".*" if greedy else ".*?")
            else:
                pieces.append("." if ch == "?" else re.escape(ch))
        return pieces


# --- flag values ------------------------------------------------------------------------------


def parse_flag_options(value: str, *, line: int = 0) -> dict[str, str]:
    """``type=cache,target=/root/.cache,sharing=locked`` as a dict: CSV fields (quotes allowed),
    keys lower-cased as buildkit does, a bare key (``ro``, ``rw``) mapping to "true"."""
    if not value:
        return {}
    try:
        fields = next(csv.reader([value], strict=True))
    except csv.Error as exc:
        raise DockerfileError(line, f"cannot read the options {value!r}: {exc}") from None
    options: dict[str, str] = {}
    for field in fields:
        key, equals, option = field.partition("=")
        if not key.strip():
            raise DockerfileError(line, f"an empty option in {value!r}")
        options[key.strip().lower()] = option if equals else "true"
    return options


_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNITS["h"] = 60 * _UNITS["m"]
_DURATION = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str, line: int) -> int:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``, ``500ms``, ``0``) in nanoseconds, as
    HEALTHCHECK takes it; negative ones are refused."""
    body = text.removeprefix("+")
    if body == "0":
        return 0
    total, pos = Fraction(0), 0
    while pos < len(body) or not pos:
        match = _DURATION.match(body, pos)
        assert match is not None  # every part of the pattern may be empty
        whole, fraction, unit = match[1], match[2] or "", match[3]
        if not (whole or fraction) or unit not in _UNITS or len(whole) > 20:
            raise DockerfileError(line, f"invalid duration {text!r}: use e.g. 30s, 1m30s, 500ms or 1h")
        fraction = fraction[:20]
        total += (int(whole or "0") + Fraction(int(fraction or "0"), 10 ** len(fraction))) * _UNITS[unit]
        pos = match.end()
    if total >= 2**63:
        raise DockerfileError(line, f"invalid duration {text!r}: too long")
    return int(total)
