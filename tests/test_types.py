"""The type checker is part of the suite: ``mypy`` over the tree, as configured in pyproject.toml
(strict on ``oci`` and ``storage_backends``, the default checks elsewhere), and over ``bench/``,
whose scripts import each other flat and so are checked on their own.

A new ``type: ignore`` must say why on its line; the count is kept in bench/README.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(?P<after>.*)$")


@pytest.mark.parametrize("target", [[], ["bench"]], ids=["tree", "bench"])
def test_mypy_finds_nothing(target: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *target], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def unexplained_ignores(text: str) -> list[int]:
    """Lines whose ``type: ignore`` carries no ``# reason`` after it (nor on the line above)."""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        match = IGNORE.search(line)
        if match is None:
            continue
        explained = "#" in match["after"] or (number > 1 and lines[number - 2].strip().startswith("#"))
        if not explained:
            found.append(number)
    return found


def test_a_type_ignore_says_why() -> None:
    missing = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for folder in ("oci", "storage_backends", "registry", "puller", "tests", "bench")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        for number in unexplained_ignores(path.read_text())
    ]
    assert not missing, "add '# <why>' after each type: ignore:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("x = f()  # type: ignore[no-untyped-call]\n", [1]),
        ("x = f()  # type: ignore[no-untyped-call]  # f is from an untyped plugin\n", []),
        ("# the stubs lack members\nx = t.members  # type: ignore[attr-defined]\n", []),
        ("x = 1\n", []),
    ],
)
def test_the_ignore_check_itself(source: str, flagged: list[int]) -> None:
    assert unexplained_ignores(source) == flagged
