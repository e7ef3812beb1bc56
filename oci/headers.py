"""Header values from a server, parsed strictly: ASCII grammar, not Python's Unicode rules."""

from __future__ import annotations

import re

_DELAY = re.compile(r"[0-9]{1,9}", re.ASCII)  # str.isdigit() accepts "²" and "٣"; int() accepts "٣"


def retry_after(value: str | None, cap: float = 30.0) -> float | None:
    """``Retry-After`` in seconds (delta-seconds only, capped), or None when absent or malformed."""
    if value is None:
        return None
    value = value.strip()
    if not _DELAY.fullmatch(value):
        return None
    return min(float(int(value)), cap)
