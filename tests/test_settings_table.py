"""The README's tables of settings say what the code declares, and the declarations hold together.

Both tables are generated (registry/settings_readme.py, puller/unpack_limits.py), so a
setting added, renamed or given a new default fails here until README.md is regenerated.
"""

from __future__ import annotations

import difflib
from typing import Any

import pytest

from puller.unpack.limits import UnpackLimits, markdown_table
from registry.config import SETTINGS, Settings, load_settings
from registry.settings_readme import HEADER, configuration_table, table_in
from registry.settings_schema import Setting

from .servers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def readme_table(header: str) -> str:
    start, end = table_in(README, header)
    return README[start:end]


def assert_same_table(expected: str, header: str, command: str) -> None:
    found = readme_table(header)
    diff = "".join(
        difflib.unified_diff(found.splitlines(True), expected.splitlines(True), "README.md", "declared")
    )
    assert found == expected, f"README.md's table differs from the declarations; run `{command}`:\n{diff}"


def test_the_configuration_table_is_generated_from_the_declarations() -> None:
    assert_same_table(configuration_table(), HEADER, "python -m registry.settings_readme --write README.md")


def test_the_unpack_limits_table_is_generated_from_the_declarations() -> None:
    command = "python -m puller.unpack.limits  # and paste its output over the README's table"
    assert_same_table(markdown_table(), "| Variable | Default | Bounds |", command)


@pytest.mark.parametrize("declared", SETTINGS.values(), ids=list(SETTINGS))
def test_each_default_reads_back_as_written(declared: Setting[Any]) -> None:
    """What --help and the README show as the default is the default, in every source."""
    default = getattr(Settings(), declared.name)
    written = declared.written_default()
    assert declared.kind.read(written) == default
    variable = load_settings({}, environ={declared.env: written})
    assert getattr(variable, declared.name) == default


def test_every_limit_has_a_variable_that_sets_it() -> None:
    raised = UnpackLimits.from_env(
        {
            "PIER_UNPACK_MAX_BYTES": "1",
            "PIER_UNPACK_MAX_ENTRIES": "2",
            "PIER_UNPACK_MAX_LAYER_BYTES": "3",
            "PIER_UNPACK_MAX_LAYER_ENTRIES": "4",
            "PIER_UNPACK_MIN_FREE": "5",
        }
    )
    assert raised == UnpackLimits(1, 2, 3, 4, 5)
