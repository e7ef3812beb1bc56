"""Reading samples out of Prometheus exposition text, as /metrics serves it."""

from __future__ import annotations

import re


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (labels: a subset that must match)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name} {labels}")
