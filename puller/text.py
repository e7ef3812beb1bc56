"""What the client prints: sizes in docker's units, counted nouns, and untrusted text made safe.

Sizes use docker's decimal units everywhere (kB/MB/GB = 10^3/10^6/10^9, three
significant digits: ``12.3MB``), so a pull's progress, ``pier images`` and a summary
line agree. Text from a registry, an image's config or a loaded archive may carry NUL,
escape sequences or bidi overrides that would rewrite the user's terminal: it goes
through ``printable`` before it is shown.
"""

from __future__ import annotations

import unicodedata

from oci.units import human_size

__all__ = ["human_size", "plural", "printable"]

# Format characters that reorder or hide text on screen (Trojan Source, CVE-2021-42574).
_INVISIBLE = frozenset("\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 layer``, ``2 layers``, ``0 layers``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` on one line with every control or invisible character escaped (``\\x00``, ``\\u202e``).

    ``limit`` clips it first, to that many characters: text from a server may be any length.
    """
    if limit is not None:
        text = text[:limit]
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == " " or (char.isprintable() and char not in _INVISIBLE):
            out.append(char)
        elif unicodedata.category(char) in ("Zs",) and char not in _INVISIBLE:
            out.append(" ")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)
