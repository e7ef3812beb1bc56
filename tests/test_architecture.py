"""The packages' allowed imports, checked on every module (README, "Architecture").

    oci               <- pure OCI rules; imports no other pier package
    storage_backends  <- oci;               knows nothing of HTTP
    registry          <- oci, storage_backends
    puller            <- oci;               reaches registries over HTTP only

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("oci", "storage_backends", "registry", "puller")
ALLOWED: dict[str, frozenset[str]] = {
    "oci": frozenset(),
    "storage_backends": frozenset({"oci"}),
    "registry": frozenset({"oci", "storage_backends"}),
    "puller": frozenset({"oci"}),
}
# Third-party modules a package must not use: storage knows nothing of HTTP, and the pure
# core does no I/O of its own.
FORBIDDEN_THIRD_PARTY: dict[str, frozenset[str]] = {
    "oci": frozenset({"starlette", "uvicorn", "httpx", "aiohttp", "boto3", "botocore"}),
    "storage_backends": frozenset({"starlette", "uvicorn", "httpx", "aiohttp", "h11", "httptools"}),
    "registry": frozenset({"httpx"}),  # the server's client side (the mirror) uses aiohttp
    "puller": frozenset({"starlette", "uvicorn", "aiohttp", "boto3"}),
}


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every absolute module name ``source`` imports, relative imports resolved against ``module``."""
    found: set[str] = set()
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
    return found


def violations(package: str, module: str, imports: set[str]) -> list[str]:
    wrong = []
    for name in sorted(imports):
        top = name.split(".", 1)[0]
        if top in PACKAGES and top != package and top not in ALLOWED[package]:
            wrong.append(f"{module} imports {name}: {package} may import only {sorted(ALLOWED[package])}")
        if top in FORBIDDEN_THIRD_PARTY[package]:
            wrong.append(f"{module} imports {name}: {package} must not use {top}")
    return wrong


def modules() -> list[tuple[str, str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found.append((package, ".".join(parts), path))
    return found


def test_every_package_imports_only_what_the_architecture_allows() -> None:
    checked = modules()
    assert len(checked) > 40, "the walk found too few modules to be checking the tree"
    wrong: list[str] = []
    for package, module, path in checked:
        is_package = path.name == "__init__.py"
        name = module.removesuffix(".__init__") if is_package else module
        wrong += violations(package, name, imported_modules(path.read_text(), name, is_package))
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    ("package", "module", "source", "expected"),
    [
        ("puller", "puller.cli", "def serve():\n    from registry.cli import main\n", "registry.cli"),
        ("oci", "oci.digest", "from puller import text\n", "puller"),
        ("storage_backends", "storage_backends.s3", "from ..registry import layout\n", "registry"),
        ("storage_backends", "storage_backends.base", "import starlette.requests\n", "starlette"),
        ("registry", "registry.app", "from puller.reference import parse\n", "puller.reference"),
    ],
)
def test_the_check_catches_a_forbidden_import(package: str, module: str, source: str, expected: str) -> None:
    """The checker itself: a lazy, a relative and a third-party violation are each reported."""
    found = violations(package, module, imported_modules(source, module, is_package=False))
    assert any(expected in line for line in found), found


def test_allowed_imports_pass_the_check() -> None:
    source = "from oci.digest import Digest\nfrom . import layout\nfrom storage_backends import base\n"
    assert violations("registry", "registry.app", imported_modules(source, "registry.app", False)) == []
