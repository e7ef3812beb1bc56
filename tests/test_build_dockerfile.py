"""The Dockerfile parser reads files as docker's buildkit frontend does, and refuses with a line."""

from __future__ import annotations

import pytest

from puller.build.dockerfile import (
    DockerfileError,
    Heredoc,
    Instruction,
    arg_values,
    expand,
    key_values,
    parse,
    parse_duration,
    parse_flag_options,
    words,
)
from puller.errors import PierError


def body(text: str) -> list[Instruction]:
    """The instructions after a leading ``FROM scratch``."""
    return list(parse("FROM scratch\n" + text).instructions[1:])


def one(text: str) -> Instruction:
    (instruction,) = body(text)
    return instruction


def refusal(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as caught:
        parse(text)
    return caught.value


# --- lines, comments, directives --------------------------------------------------------------


def test_a_plain_file() -> None:
    dockerfile = parse('FROM alpine:3.20\nRUN echo hi\nCMD ["sh"]\n')
    assert dockerfile.escape == "\\"
    assert [(i.keyword, i.line, i.rest) for i in dockerfile.instructions] == [
        ("FROM", 1, "alpine:3.20"),
        ("RUN", 2, "echo hi"),
        ("CMD", 3, '["sh"]'),
    ]


def test_keywords_are_case_insensitive_and_may_be_indented() -> None:
    instruction = one("   run   echo hi  ")
    assert (instruction.keyword, instruction.rest, instruction.original) == (
        "RUN",
        "echo hi",
        "run   echo hi",
    )


def test_continuations_join_lines_skipping_comments_and_blanks() -> None:
    instruction = one(
        "RUN apt-get update \\\n  # a comment\n\n    && apt-get install -y curl \\  \n  && true\n"
    )
    assert instruction.line == 2
    assert instruction.rest == "apt-get update     && apt-get install -y curl   && true"
    assert "\n" not in instruction.original


def test_line_numbers_count_every_physical_line() -> None:
    instructions = parse("# c\n\nFROM a \\\n  AS b\n\n# x\nRUN x\n").instructions
    assert [i.line for i in instructions] == [3, 7]


def test_an_escaped_escape_at_the_end_does_not_continue() -> None:
    assert [i.rest for i in body("RUN echo a\\\\\nRUN echo b\n")] == ["echo a\\\\", "echo b"]


def test_a_huge_continuation_chain() -> None:
    instruction = one("RUN true" + " \\\n && true" * 5000 + "\n")
    assert instruction.rest.count("&& true") == 5000


def test_a_continuation_at_the_end_of_the_file() -> None:
    assert one("RUN echo \\").rest == "echo"


def test_crlf_and_a_bom() -> None:
    dockerfile = parse(
        "\ufeff# escape=`\r\nFROM scratch\r\nRUN echo a `\r\n  b\r\nCOPY <<EOF /x\r\nhi\r\nEOF\r\n"
    )
    assert dockerfile.escape == "`"
    run, copy = dockerfile.instructions[1:]
    assert run.rest == "echo a   b"
    assert copy.heredocs == (Heredoc("EOF", "hi\n", True, False),)


def test_the_escape_directive_changes_continuations() -> None:
    dockerfile = parse("# escape=`\nFROM scratch\nRUN dir c:\\ `\n  /s\n")
    assert dockerfile.instructions[1].rest == "dir c:\\   /s"


@pytest.mark.parametrize(
    "text",
    [
        "# syntax=docker/dockerfile:1\n# ESCAPE = `\nFROM scratch\n",
        "# check=skip=all\n#escape=`\nFROM scratch\n",
    ],
)
def test_directives_at_the_top(text: str) -> None:
    assert parse(text).escape == "`"


@pytest.mark.parametrize(
    "text",
    [
        "\n# escape=`\nFROM scratch\n",  # after a blank line
        "# hello\n# escape=`\nFROM scratch\n",  # after a comment
        "# foo=bar\n# escape=`\nFROM scratch\n",  # after an unknown directive, which is a comment
        "FROM scratch\n# escape=`\n",
    ],
)
def test_directives_after_anything_else_are_comments(text: str) -> None:
    assert parse(text).escape == "\\"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("# escape=x\nFROM scratch\n", 1, "invalid escape token"),
        ("# escape=`\n# escape=\\\nFROM scratch\n", 2, "only one escape parser directive"),
        ("", 1, "no FROM instruction"),
        ("# just a comment\n\n", 1, "no FROM instruction"),
        ("ARG A=1\n", 1, "no FROM instruction"),
        ("ARG A\nRUN x\nFROM scratch\n", 2, "RUN before the first FROM"),
        ("FROM scratch\nFROBNICATE x\n", 2, "unknown instruction: FROBNICATE"),
        ('FROM scratch\nruN["x"]\n', 2, "unknown instruction"),
        ("FROM a AS x\nFROM b AS X\n", 2, "duplicate stage name"),
    ],
)
def test_file_level_refusals(text: str, line: int, message: str) -> None:
    error = refusal(text)
    assert (error.line, message in error.message) == (line, True), error
    assert str(error) == f"Dockerfile:{error.line}: {error.message}"
    assert isinstance(error, PierError)


def test_arg_before_from_and_stages() -> None:
    dockerfile = parse(
        "ARG BASE=alpine\nFROM $BASE AS Build\nRUN make\nFROM scratch\nCOPY --from=build /a /a\n"
    )
    assert [i.rest for i in dockerfile.meta_args()] == ["BASE=alpine"]
    build, final = dockerfile.stages()
    assert (build.index, build.name, build.base, build.start.line) == (0, "build", "$BASE", 2)
    assert [i.keyword for i in build.instructions] == ["RUN"]
    assert (final.index, final.name, final.base, [i.keyword for i in final.instructions]) == (
        1,
        None,
        "scratch",
        ["COPY"],
    )


# --- instructions and their arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN", "RUN requires at least one argument"),
        ("RUN --mount=type=cache,target=/x", "RUN requires at least one argument"),
        ("RUN []", "RUN requires at least one argument"),
        ("CMD", "CMD requires at least one argument"),
        ("WORKDIR", "WORKDIR requires"),
        ("USER   ", "USER requires"),
        ("EXPOSE", "EXPOSE requires"),
        ("ENV", "ENV requires"),
        ("ONBUILD", "ONBUILD requires"),
        ("COPY onlyone", "COPY requires at least two arguments"),
        ('COPY ["onlyone"]', "COPY requires at least two arguments"),
        ("ADD", "ADD requires at least two arguments"),
        ("COPY a <<EOF\nx\nEOF", "heredoc as its destination"),
        ("FROM", "FROM requires at least one argument"),
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a AS b c", "FROM requires either one or three arguments"),
        ("FROM a AS 1st", "invalid name for build stage"),
        ("FROM a AS b/c", "invalid name for build stage"),
        ("SHELL /bin/bash -c", "SHELL requires the JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ('VOLUME ["/a", " "]', "VOLUME paths cannot be empty"),
        ("HEALTHCHECK", "HEALTHCHECK requires"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CMD", "HEALTHCHECK CMD needs a command"),
        ("HEALTHCHECK CMD []", "HEALTHCHECK CMD needs a command"),
        ("HEALTHCHECK RUN x", "unknown type 'RUN' in HEALTHCHECK"),
        ("ONBUILD ONBUILD RUN x", "ONBUILD ONBUILD"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD NOPE x", "unknown instruction: NOPE"),
        ("ONBUILD RUN", "RUN requires at least one argument"),
        ("ENV A", "ENV A needs a value"),
        ("ENV A=1 B", "can't find = in 'B'"),
        ("ENV =1", "ENV names can not be blank"),
        ("LABEL =x", "LABEL names can not be blank"),
        ("ARG =x", "ARG names can not be blank"),
    ],
)
def test_argument_refusals(text: str, message: str) -> None:
    error = refusal("FROM scratch\n" + text + "\n")
    assert error.line == 2
    assert message in error.message, error


@pytest.mark.parametrize(
    ("text", "exec_form"),
    [
        ('RUN ["echo", "a b"]', ("echo", "a b")),
        ('CMD  [ "x" ]', ("x",)),
        ("CMD []", ()),
        ("ENTRYPOINT []", ()),
        ('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]', ("/bin/bash", "-eo", "pipefail", "-c")),
        ('COPY ["a b", "/c d/"]', ("a b", "/c d/")),
        ('VOLUME ["/data"]', ("/data",)),
        ('HEALTHCHECK CMD ["curl", "-f", "http://x/"]', ("curl", "-f", "http://x/")),
        ('RUN ["\\u00e9"]', ("é",)),
        ("RUN [echo, hi]", None),  # not JSON: the shell form
        ("RUN [ -f /x ] && echo y", None),
        ('RUN ["a"] trailing', None),
        ("RUN [NaN]", None),
        ("RUN " + "[" * 100_000, None),  # too deep to parse: shell form, no crash
        ("RUN echo '[x]'", None),
        ("HEALTHCHECK CMD curl -f http://x/", None),
        ("EXPOSE [80]", None),  # only some instructions take JSON
    ],
)
def test_exec_form(text: str, exec_form: tuple[str, ...] | None) -> None:
    assert one(text).exec_form == exec_form


@pytest.mark.parametrize("text", ['RUN ["a", 1]', 'CMD [["a"]]', 'RUN ["a", null]', 'RUN ["\\ud800"]'])
def test_json_arrays_of_anything_but_strings_are_refused(text: str) -> None:
    assert "JSON array" in refusal("FROM scratch\n" + text).message


def test_onbuild_trigger_is_parsed() -> None:
    instruction = one('ONBUILD COPY --chown=1:1 ["a", "/b"]')
    assert instruction.rest == 'COPY --chown=1:1 ["a", "/b"]'
    trigger = instruction.trigger
    assert trigger is not None
    assert (trigger.keyword, trigger.flags, trigger.exec_form, trigger.line) == (
        "COPY",
        (("chown", "1:1"),),
        ("a", "/b"),
        2,
    )


def test_shell_form_strings_are_kept_as_written() -> None:
    assert one("WORKDIR /my dir").rest == "/my dir"
    assert one('MAINTAINER "Jane <j@x>"').rest == '"Jane <j@x>"'
    assert one("STOPSIGNAL SIGTERM").exec_form is None


# --- flags ------------------------------------------------------------------------------------


def test_flags_split_off_in_order() -> None:
    instruction = one("RUN --mount=type=cache,target=/a --network=none --mount=type=tmpfs,target=/t make")
    assert instruction.flags == (
        ("mount", "type=cache,target=/a"),
        ("network", "none"),
        ("mount", "type=tmpfs,target=/t"),
    )
    assert instruction.rest == "make"
    assert instruction.flag_values("mount") == ["type=cache,target=/a", "type=tmpfs,target=/t"]
    assert instruction.flag("network") == "none"
    assert instruction.flag("security") is None


def test_bool_flags() -> None:
    bare, off, on, absent = body("COPY --link a b\nCOPY --link=false a b\nCOPY --link=TRUE a b\nCOPY a b\n")
    assert bare.flags == (("link", None),) and bare.flag("link") == ""
    assert [i.bool_flag("link") for i in (bare, off, on, absent)] == [True, False, True, False]


def test_flag_quotes_and_the_end_of_flags() -> None:
    assert one('COPY --chown="1000:1000" a b').flags == (("chown", "1000:1000"),)
    instruction = one("RUN -- --not-a-flag")
    assert (instruction.flags, instruction.rest) == ((), "--not-a-flag")
    assert one("RUN echo --not-a-flag").flags == ()


def test_from_platform_and_healthcheck_flags() -> None:
    assert one("FROM --platform=$BUILDPLATFORM golang AS b").flag("platform") == "$BUILDPLATFORM"
    health = one(
        "HEALTHCHECK --interval=5m --timeout=3s --start-period=0 --start-interval=1s --retries=3 CMD x"
    )
    assert health.flag("retries") == "3" and health.rest == "CMD x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN --foo=bar x", "RUN does not support the flag --foo"),
        ("RUN --security=insecure x", "RUN --security is not supported by pier"),
        ("RUN --network=bridge x", "RUN --network must be default, none or host"),
        ("RUN --mount x", "RUN --mount needs a value"),
        ("COPY --from build a b", "COPY --from needs a value"),  # only --name=value, as docker
        ("COPY --from= a b", "COPY --from needs a value"),
        ("COPY --from=a --from=b a b", "COPY --from is given more than once"),
        ("COPY --parents a b", "COPY --parents is not supported by pier"),
        ("COPY --exclude=*.md a b", "not supported by pier"),
        ("COPY --link=yes a b", "COPY --link takes true or false"),
        ("ADD --keep-git-dir=true https://x/y.git /s", "ADD --keep-git-dir is not supported by pier"),
        ("ADD --from=x a b", "ADD does not support the flag --from"),
        ("ENV --x=1 A=1", "ENV does not support the flag --x"),
        ("CMD --help", "CMD does not support the flag --help"),
        ("FROM --platform linux/amd64 alpine", "FROM --platform needs a value"),
        ("HEALTHCHECK --interval=soon CMD x", "invalid duration"),
        ("HEALTHCHECK --interval=10us CMD x", "cannot be less than 1ms"),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries must be a count"),
        ("HEALTHCHECK --retries=many CMD x", "--retries must be a count"),
        ("ONBUILD --x RUN y", "ONBUILD does not support the flag --x"),
        ("ONBUILD RUN --bad=1 y", "RUN does not support the flag --bad"),
    ],
)
def test_flag_refusals(text: str, message: str) -> None:
    error = refusal("FROM scratch\n" + text + "\n")
    assert error.line == 2
    assert message in error.message, error


@pytest.mark.parametrize(
    ("value", "options"),
    [
        (
            "type=cache,target=/root/.cache,sharing=locked",
            {"type": "cache", "target": "/root/.cache", "sharing": "locked"},
        ),
        ("type=bind,ro,source=a", {"type": "bind", "ro": "true", "source": "a"}),
        ("Type=secret,id=x,readonly", {"type": "secret", "id": "x", "readonly": "true"}),
        ('type=bind,"source=a,b",target=/x', {"type": "bind", "source": "a,b", "target": "/x"}),
        ("target=/a=b", {"target": "/a=b"}),
        ("", {}),
    ],
)
def test_parse_flag_options(value: str, options: dict[str, str]) -> None:
    assert parse_flag_options(value) == options


@pytest.mark.parametrize("value", ["type=cache,,target=/x", "type=cache,", '"unterminated,a=b', "=x"])
def test_parse_flag_options_refusals(value: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_flag_options(value, line=7)
    assert caught.value.line == 7


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("30s", 30 * 10**9),
        ("1m30s", 90 * 10**9),
        ("500ms", 5 * 10**8),
        ("1h", 3600 * 10**9),
        ("1.5h", 5400 * 10**9),
        (".5s", 5 * 10**8),
        ("1h2m3s4ms5us6ns", 3723004005006),
        ("10µs", 10_000),
        ("+2s", 2 * 10**9),
        ("1.0000000001s", 1_000_000_000),
    ],
)
def test_parse_duration(text: str, nanoseconds: int) -> None:
    assert parse_duration(text, 1) == nanoseconds


@pytest.mark.parametrize(
    "text", ["", "s", "10", "1d", "-1s", "1.s.", "1s 2s", ".s", "9" * 30 + "h", "9" * 5000 + "s"]
)
def test_parse_duration_refusals(text: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_duration(text, 9)
    assert caught.value.line == 9


# --- heredocs ---------------------------------------------------------------------------------


def test_run_heredoc() -> None:
    instruction, user = body("RUN <<EOF\nset -e\n  echo $HOME # kept\n\nEOF\nUSER me\n")
    assert (user.keyword, user.line) == ("USER", 7)
    assert instruction.rest == "<<EOF"
    assert instruction.heredocs == (Heredoc("EOF", "set -e\n  echo $HOME # kept\n\n", True, False),)


def test_heredoc_bodies_are_not_instructions() -> None:
    instructions = body("RUN python3 <<EOF\nFROM x\n# not a comment\nEOF\nRUN b\n")
    assert [(i.keyword, i.line) for i in instructions] == [("RUN", 2), ("RUN", 6)]
    assert instructions[0].heredocs[0].content == "FROM x\n# not a comment\n"


@pytest.mark.parametrize(
    ("text", "heredocs"),
    [
        ("RUN <<'EOF'\n$x\nEOF", [Heredoc("EOF", "$x\n", False, False)]),
        ('RUN <<"EOF"\n$x\nEOF', [Heredoc("EOF", "$x\n", False, False)]),
        ("RUN <<-EOF\n\t\tindented\n\tEOF", [Heredoc("EOF", "indented\n", True, True)]),
        ("RUN <<EOF\n\tkept\nEOF", [Heredoc("EOF", "\tkept\n", True, False)]),
        ("RUN <<EOF\n\tEOF\nEOF", [Heredoc("EOF", "\tEOF\n", True, False)]),  # no <<-: tab counts
        ("RUN <<EMPTY\nEMPTY", [Heredoc("EMPTY", "", True, False)]),
        ("RUN 3<<EOF\nx\nEOF", [Heredoc("EOF", "x\n", True, False)]),
        ("RUN cat <<A <<B\na\nA\nb\nB", [Heredoc("A", "a\n", True, False), Heredoc("B", "b\n", True, False)]),
        (
            "COPY <<X <<Y /dest/\nY\nX\nX\nY",
            [Heredoc("X", "Y\n", True, False), Heredoc("Y", "X\n", True, False)],
        ),
        ("ADD --chmod=755 <<EOF /run.sh\n#!/bin/sh\nEOF", [Heredoc("EOF", "#!/bin/sh\n", True, False)]),
        ("RUN --mount=type=cache,target=/c <<EOF\nx\nEOF", [Heredoc("EOF", "x\n", True, False)]),
        ("RUN \\\n  <<EOF\nx\nEOF", [Heredoc("EOF", "x\n", True, False)]),
    ],
)
def test_heredoc_forms(text: str, heredocs: list[Heredoc]) -> None:
    assert list(one(text).heredocs) == heredocs


@pytest.mark.parametrize(
    "text",
    [
        'RUN echo "<<EOF"',
        "RUN echo '<<EOF'",
        'RUN ["cat", "<<EOF"]',
        "RUN echo a<<EOF",
        "RUN cat <<<word",
        "RUN echo <<",
    ],
)
def test_not_heredocs(text: str) -> None:
    assert one(text).heredocs == ()


def test_heredocs_only_for_run_copy_add() -> None:
    assert "unknown instruction: INVALID" in refusal("FROM scratch\nUSER <<INVALID\nINVALID\n").message


def test_onbuild_heredoc_goes_to_the_trigger() -> None:
    instruction, user = body("ONBUILD RUN <<EOF\necho hi\nEOF\nUSER me\n")
    assert instruction.heredocs == ()
    assert instruction.trigger is not None
    assert instruction.trigger.heredocs == (Heredoc("EOF", "echo hi\n", True, False),)
    assert user.line == 5


@pytest.mark.parametrize(
    "text",
    [
        "RUN <<EOF\necho hi\n",
        "RUN <<EOF\necho hi\nEOF \n",  # trailing blank: not the delimiter
        "RUN <<EOF\n  EOF\n",
        "RUN <<A <<B\na\nA\nb\n",
        "RUN <<EOF",
    ],
)
def test_unterminated_heredoc(text: str) -> None:
    error = refusal("FROM scratch\n" + text)
    assert error.line == 2
    assert "unterminated heredoc" in error.message


def test_unterminated_heredoc_quote() -> None:
    assert refusal("FROM scratch\nRUN <<'EOF\nx\nEOF\n").line == 2


# --- expansion --------------------------------------------------------------------------------

ENV = {"A": "hello world", "E": "", "P": "/usr/local/bin/python3.11", "N": "v1.2.3"}


@pytest.mark.parametrize(
    ("word", "expanded"),
    [
        ("$A", "hello world"),
        ("${A}!", "hello world!"),
        ("$A_x", ""),  # the name runs on
        ("${A}_x", "hello world_x"),
        ("$MISSING", ""),
        ("'$A'", "$A"),
        ('"$A"', "hello world"),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ("\\$A", "$A"),
        ('"\\$A \\"q\\" \\\\ \\n"', '$A "q" \\ \\n'),
        ("a\\ b", "a b"),
        ("a\\", "a"),
        ("$", "$"),
        ("$ x", "$ x"),
        ("$1", ""),
        ("${E:-d}", "d"),
        ("${E-d}", ""),
        ("${MISSING-d}", "d"),
        ("${A:-d}", "hello world"),
        ("${E:+alt}", ""),
        ("${E+alt}", "alt"),
        ("${A:+alt}", "alt"),
        ("${MISSING:-${A}}", "hello world"),
        ("${MISSING:-'a b'}", "a b"),
        ("${MISSING:-a}b", "ab"),
        ("${E?}", ""),
        ("${P#*/}", "usr/local/bin/python3.11"),
        ("${P##*/}", "python3.11"),
        ("${P%/*}", "/usr/local/bin"),
        ("${P%%/*}", ""),
        ("${P%.*}", "/usr/local/bin/python3"),
        ("${P%%.*}", "/usr/local/bin/python3"),
        ("${N#v}", "1.2.3"),
        ("${N#?}", "1.2.3"),
        ("${N#\\*}", "v1.2.3"),
        ("${N%.[0-9]}", "v1.2.3"),  # no brackets: a literal
        ("${N/./-}", "v1-2.3"),
        ("${N//./-}", "v1-2-3"),
        ("${N//[.]/-}", "v1.2.3"),
        ("${N/1*/x}", "vx"),
        ("${N/\\//x}", "v1.2.3"),
        ("${MISSING#x}", ""),
    ],
)
def test_expand(word: str, expanded: str) -> None:
    assert expand(word, ENV) == expanded


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${E:?must be set}", "E: must be set"),
        ("${MISSING?}", "MISSING: is not allowed to be unset"),
        ("${E:?}", "E: is not allowed to be empty"),
        ("${A", "missing '}'"),
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:-x}", "bad substitution"),
        ("${{A}}", "bad substitution"),
        ("${A:x}", "unsupported modifier (:x)"),
        ("${A:#x}", "unsupported modifier (:#)"),
        ("${A^^}", "unsupported modifier (^)"),
        ("${A:-x", "missing '}'"),
        ("${A/x}", "missing '/'"),
        ("${A//x}", "missing '/'"),
        ("'open", "unterminated single quote"),
        ('"open', "unterminated double quote"),
        ("${A:-" * 5000 + "}" * 5000, "nested too deeply"),
    ],
)
def test_expand_refusals(word: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        expand(word, ENV, line=4)
    assert caught.value.line == 4
    assert message in caught.value.message, caught.value


def test_expand_strict_about_missing_variables() -> None:
    with pytest.raises(DockerfileError, match="MISSING is not set"):
        expand("a${MISSING}", ENV, lenient_missing=False)
    assert expand("${MISSING:-d}${MISSING+x}$A", ENV, lenient_missing=False) == "dhello world"


def test_expand_with_a_backtick_escape() -> None:
    assert expand('c:\\dir `$A `"', ENV, "`") == 'c:\\dir $A "'
    assert expand('"`"`$A"', ENV, "`") == '"$A'


def test_expand_without_quote_processing_for_heredoc_bodies() -> None:
    assert expand("echo \"$A\" '$A' \\$A\n", ENV, quotes=False) == "echo \"hello world\" 'hello world' $A\n"


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("80 443/tcp", ["80", "443/tcp"]),
        ("  a   b\t c  ", ["a", "b", "c"]),
        ("$A /dest/", ["hello", "world", "/dest/"]),  # an unquoted expansion splits
        ('"$A" /dest/', ["hello world", "/dest/"]),
        ("'a b' c\\ d", ["a b", "c d"]),
        ('"" x', ["x"]),  # empty words vanish, as in buildkit
        ("$MISSING", []),
        ("pre$A'post'", ["prehello", "worldpost"]),
    ],
)
def test_words(text: str, split: list[str]) -> None:
    assert words(text, ENV) == split


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("ENV A=1", [("A", "1")]),
        ('ENV A=1 B="two words" C=${X}/bin', [("A", "1"), ("B", "two words"), ("C", "x/bin")]),
        ("ENV A=1 B=$A", [("A", "1"), ("B", "old")]),  # a pair does not see an earlier one
        ("ENV PATH=/x:$PATH", [("PATH", "/x:/bin")]),
        ("ENV A= B=''", [("A", ""), ("B", "")]),
        ("ENV A=a\\ b", [("A", "a b")]),
        ("ENV MY_VAR my value  with $X", [("MY_VAR", "my value  with x")]),
        ('ENV Q "quoted value"', [("Q", "quoted value")]),
        (
            'LABEL "com.example.vendor"="ACME Inc" version=1.0',
            [("com.example.vendor", "ACME Inc"), ("version", "1.0")],
        ),
        ("LABEL description='a b' x=y=z", [("description", "a b"), ("x", "y=z")]),
        ("LABEL $X=1", [("x", "1")]),
    ],
)
def test_key_values(text: str, pairs: list[tuple[str, str]]) -> None:
    assert key_values(one(text), {"A": "old", "X": "x", "PATH": "/bin"}) == pairs


def test_key_values_with_a_backtick_escape() -> None:
    dockerfile = parse("# escape=`\nFROM scratch\nENV P=C:\\dir Q=a` b\n")
    assert key_values(dockerfile.instructions[1], {}, dockerfile.escape) == [("P", "C:\\dir"), ("Q", "a b")]


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("ARG A", [("A", None)]),
        ("ARG A= B=2 C", [("A", ""), ("B", "2"), ("C", None)]),
        ('ARG V="1 2" W=$X', [("V", "1 2"), ("W", "x")]),
    ],
)
def test_arg_values(text: str, pairs: list[tuple[str, str | None]]) -> None:
    assert arg_values(one(text), {"X": "x"}) == pairs


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("ENV $E=1", {"E": ""}, "ENV names can not be blank"),
        ("ENV $K=1", {"K": "a b"}, "ENV name 'a b' is not valid"),
        ("ENV $K=1", {"K": "a=b"}, "ENV name 'a=b' is not valid"),
        ("ENV A='open", {}, "unterminated single quote"),
        ("ENV A=${X:?needed}", {}, "X: needed"),
    ],
)
def test_key_values_refusals(text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        key_values(one(text), env)
    assert caught.value.line == 2
    assert message in caught.value.message


def test_arg_values_refuses_a_bad_name() -> None:
    with pytest.raises(DockerfileError, match="ARG name"):
        arg_values(one("ARG $K"), {"K": "a b"})


def test_key_values_and_arg_values_take_their_own_instructions() -> None:
    with pytest.raises(ValueError):
        key_values(one("ARG A=1"), {})
    with pytest.raises(ValueError):
        arg_values(one("ENV A=1"), {})
