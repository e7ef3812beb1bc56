"""``--format``: the Go-template subset prints as Go does and refuses everything else in one line."""

from __future__ import annotations

import pytest

from puller.formatting import FormatError, Template

ITEM = {
    "Digest": "sha256:abc",
    "Repository": "example.org/team/app",
    "Tag": "v1",
    "Config": {
        "architecture": "amd64",
        "config": {"Env": ["PATH=/bin", "A=1"], "Labels": {"b": "2", "a": "1"}, "User": None},
        "rootfs": {"type": "layers", "diff_ids": []},
    },
    "Size": 3,
    "Flag": True,
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Digest}}", "sha256:abc"),
        ("{{.Repository}}:{{.Tag}}", "example.org/team/app:v1"),
        ("{{ .Config.config.Env }}", "[PATH=/bin A=1]"),  # Go prints a list as [a b]
        ("{{.Config.config.Labels}}", "map[a:1 b:2]"),  # and a map with sorted keys
        ("{{.Config.config.User}} {{.Flag}} {{.Size}}", "<nil> true 3"),
        ("{{json .Config.config}}", '{"Env":["PATH=/bin","A=1"],"Labels":{"b":"2","a":"1"},"User":null}'),
        ("{{.Config.config.Env | json}}", '["PATH=/bin","A=1"]'),
        ("{{index .Config.config.Env 1}}", "A=1"),
        ('{{index .Config "config" "Labels" "a"}}', "1"),
        ('{{join .Config.config.Env ","}}', "PATH=/bin,A=1"),
        ("{{join .Config.config.Env `\\t`}}", "PATH=/bin\\tA=1"),  # a raw string keeps backslashes
        ('{{join .Config.config.Env "\\t"}}', "PATH=/bin\tA=1"),  # a quoted one reads Go escapes
        ("{{len .Config.rootfs.diff_ids}} {{upper .Tag}}", "0 V1"),
        ("no actions at all", "no actions at all"),
    ],
)
def test_supported_templates_print_as_go_does(template: str, expected: str) -> None:
    assert Template(template).render(ITEM) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{{.Nope}}",
            "no field 'Nope' at the top level (fields: Config, Digest, Flag, Repository, Size, Tag)",
        ),
        ("{{.Config.Config.Env}}", "no field 'Config' at .Config (fields: architecture, config, rootfs)"),
        ("{{.Digest.real}}", ".Digest.real: .Digest has no fields"),
        ("{{.__class__}}", "no field '__class__'"),  # keys of the data only: no Python attributes
        ('{{printf "%s" .Tag}}', "unknown function 'printf'"),
        ('{{__import__ "os"}}', "unknown function '__import__'"),
        ("{{.Tag", "'{{' at position 0 is never closed"),
        ("{{.Tag}} }}", "'}}' without '{{'"),
        ("{{}}", "empty action"),
        ("{{index .Config.config.Env 5}}", "index: 5 is out of range (length 2)"),
        ("{{index .Config.config.Env -1}}", "index: -1 is out of range"),
        ("{{json .Tag .Digest}}", "json takes 1 argument, got 2"),
        ("{{.Tag | .Digest}}", "a value piped into a value"),
        ("{{.Tag .Digest}}", "expected one value or a function"),
        ('{{json "unterminated}}', "cannot read"),
        ("{{- .Tag}}", "cannot read"),  # trim markers are not in the subset: said, not misread
    ],
)
def test_anything_else_is_one_clear_error(template: str, message: str) -> None:
    with pytest.raises(FormatError) as raised:
        Template(template).render(ITEM)
    assert message in str(raised.value) and str(raised.value).startswith("--format: ")
    assert "\n" not in str(raised.value)
