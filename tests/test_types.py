"""The type checker is part of the suite: ``mypy`` over the tree (packages, tests, bench), as
configured in pyproject.toml: strict on ``oci`` and ``storage_backends``, the default checks
elsewhere.

A new ``type: ignore`` must say why on its line; the count is kept in bench/README.md.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(?P<after>.*)$")


def test_mypy_finds_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def unexplained_ignores(text: str) -> list[int]:
    """Lines whose ``type: ignore`` comment carries no ``# reason`` after it (nor a comment
    on the line above). Comments only, read with ``tokenize``: strings do not count."""
    lines = text.splitlines()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = IGNORE.search(token.string)
        if match is None:
            continue
        number = token.start[0]
        explained = "#" in match["after"] or (number > 1 and lines[number - 2].strip().startswith("#"))
        if not explained:
            found.append(number)
    return found


def test_a_type_ignore_says_why() -> None:
    missing = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for folder in ("oci", "storage_backends", "registry", "puller", "tests", "bench")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if ".cache" not in path.relative_to(REPO_ROOT).parts  # bench/.cache: the benchmarks' stores
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
