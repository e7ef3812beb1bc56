"""The README's table of settings, made from their declarations (registry/settings.py).

``python -m registry.settings_readme`` prints it; ``--write README.md`` puts it in place of
the table there. tests/test_settings_table.py fails when README.md's table differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .setting_kinds import Boolean
from .settings import SETTINGS
from .settings_schema import Setting

HEADER = "| key (file) | environment | flag | default | meaning |"


def _cell(text: str) -> str:
    """A table cell: a ``|`` inside it (``debug|info``) would end it."""
    return text.replace("|", "\\|")


def _flag(declared: Setting[Any]) -> str:
    if isinstance(declared.kind, Boolean):  # its value is optional, said once above the table
        return f"`{declared.flag}`"
    value = f"[{declared.metavar}]" if declared.bare_value is not None else declared.metavar
    return f"`{declared.flag} {value}`" + (", repeatable" if declared.repeatable else "")


def _default(declared: Setting[Any]) -> str:
    if declared.doc_default:
        return declared.doc_default
    written = declared.written_default()
    return f"`{written}`" if written else "(none)"


def row(declared: Setting[Any]) -> str:
    cells = (
        f"`{declared.name}`",
        f"`{declared.env}`",
        _flag(declared),
        _default(declared),
        declared.readme_doc,
    )
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def configuration_table() -> str:
    """The markdown table, one row per setting in declaration order, ending with a newline."""
    rows = [HEADER, "|---|---|---|---|---|", *(row(declared) for declared in SETTINGS.values())]
    return "\n".join(rows) + "\n"


def table_in(text: str, header: str) -> tuple[int, int]:
    """Where the table starting with line ``header`` lies in markdown ``text``: (start, end) offsets."""
    start = text.find(header + "\n")
    if start < 0:
        raise ValueError(f"no table with the header {header!r}")
    end = start
    for line in text[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return start, end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.settings_readme", description=__doc__)
    parser.add_argument("--write", metavar="README", help="replace the table in this markdown file")
    args = parser.parse_args(argv)
    table = configuration_table()
    if not args.write:
        sys.stdout.write(table)
        return 0
    path = Path(args.write)
    text = path.read_text()
    start, end = table_in(text, HEADER)
    path.write_text(text[:start] + table + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
