"""Sizes as people read and write them, one rule for the client and the server.

Printed sizes use docker's decimal units (kB/MB/GB = 10^3/10^6/10^9, three significant
digits: ``12.3MB``), so ``pier images``, a pull's progress and ``pier gc`` agree with each
other and with docker. Written sizes (settings, environment variables) take the same
decimal units, the binary ones spelt out (``KiB``/``MiB``/``GiB``/``TiB``), and a bare
letter (``512m``, ``1k``) as binary, which is what docker's ``--memory`` and pier's earlier
configs meant by it. A size written back for a person to read again (a default in ``--help``
or the README) is exact, in whichever unit gives the smallest number: ``100GiB``, ``256GB``.
"""

from __future__ import annotations

import re

PRINTED_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_WRITTEN_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _WRITTEN_UNITS[_letter + "b"] = 1000**_power
    _WRITTEN_UNITS[_letter + "ib"] = 1024**_power
    _WRITTEN_UNITS[_letter] = 1024**_power
_WRITTEN = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE | re.ASCII)


def human_size(size: float) -> str:
    """``size`` bytes as docker prints it: ``5B``, ``1.23kB``, ``12.3MB``, ``1GB``."""
    value, unit = float(max(size, 0)), 0
    while unit < len(PRINTED_UNITS) - 1 and float(f"{value:.3g}") >= 1000:
        value /= 1000
        unit += 1
    return f"{value:.3g}{PRINTED_UNITS[unit]}"


def parse_size(text: str) -> int:
    """Bytes from ``1000``, ``64MB`` (10^6), ``64MiB`` or ``64M`` (2^20); ValueError otherwise.

    Only ASCII digits: ``str.isdigit`` also accepts ``'\\u0663'`` and ``'²'``."""
    match = _WRITTEN.fullmatch(text)
    unit = _WRITTEN_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{text!r} is not a size (examples: 1000000, 64MB, 2GiB)")
    return int(match.group(1)) * unit


def exact_size(size: int) -> str:
    """``size`` bytes written exactly, as ``parse_size`` reads it back: ``0``, ``4MiB``, ``256GB``, ``1500B``.

    Of the units that divide it, the one giving the smallest number wins, so round binary sizes
    read as binary (``100GiB``) and round decimal ones as decimal (``128GB``)."""
    if size == 0:
        return "0"
    units = [(1, "B")] + [(1000**p, f"{u}B") for p, u in enumerate("kMGTP", 1)]
    units += [(1024**p, f"{u}iB") for p, u in enumerate("KMGTP", 1)]
    unit, name = max((u for u in units if size % u[0] == 0), key=lambda u: u[0])
    return f"{size // unit}{name}"
