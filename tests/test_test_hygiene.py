"""Rules the test modules keep, read from their source with ``ast``.

No test module imports another: what two suites share lives in a support module (not named
``test_*``), so a module runs, and is collected, once and on its own. No test sleeps a fixed
time where it could wait for the event: a literal ``time.sleep(…)``/``asyncio.sleep(…)`` is
allowed only on a line saying why, ``# sleep-ok: <reason>`` (a token or TTL must expire, a
clock must move, nothing may happen meanwhile); waiting for something uses
``helpers.wait_until``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SLEEP_OK = "# sleep-ok:"


def all_test_modules() -> list[Path]:
    return sorted(TESTS.glob("test_*.py"))


def imported_test_modules(tree: ast.Module) -> list[str]:
    """The ``test_*`` modules an ``import``/``from … import`` anywhere in the module names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if not node.module:  # from . import test_x
                names = [alias.name for alias in node.names]
            found += [name for name in names if name.rsplit(".", 1)[-1].startswith("test_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.rsplit(".", 1)[-1].startswith("test_")]
    return found


def fixed_sleeps(tree: ast.Module) -> list[ast.Call]:
    """Calls of ``time.sleep``, ``asyncio.sleep`` (any ``….sleep``) or ``sleep`` with a literal duration."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        named_sleep = (isinstance(func, ast.Attribute) and func.attr == "sleep") or (
            isinstance(func, ast.Name) and func.id == "sleep"
        )
        if named_sleep and isinstance(node.args[0], ast.Constant):
            found.append(node)
    return sorted(found, key=lambda call: call.lineno)


def test_the_rules_see_what_they_forbid() -> None:
    imports = (
        "from .test_gc import x\nfrom . import test_fsck\nimport tests.test_mirror\nfrom .helpers import y\n"
    )
    assert imported_test_modules(ast.parse(imports)) == ["test_gc", "test_fsck", "tests.test_mirror"]
    sleeps = (
        "async def f(pause):\n    time.sleep(1)\n    await asyncio.sleep(0.5)\n"
        "    time.sleep(pause)\n    sleep(2)\n"
    )
    assert [call.lineno for call in fixed_sleeps(ast.parse(sleeps))] == [2, 3, 5]


def test_no_test_module_imports_another() -> None:
    offenders = {
        path.name: names
        for path in all_test_modules()
        if (names := imported_test_modules(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}, "move what they share into a support module (not named test_*)"


def test_fixed_sleeps_say_why_they_cannot_wait_for_an_event() -> None:
    unexplained = []
    for path in all_test_modules():
        source = path.read_text()
        lines = source.splitlines()
        for call in fixed_sleeps(ast.parse(source, str(path))):
            if SLEEP_OK not in lines[call.lineno - 1]:
                unexplained.append(f"{path.name}:{call.lineno}: {lines[call.lineno - 1].strip()}")
    assert not unexplained, (
        "wait for the event (helpers.wait_until) or add '# sleep-ok: <reason>':\n" + "\n".join(unexplained)
    )
