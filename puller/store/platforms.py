"""Platforms (os/arch[/variant]) as image indexes name them, and this machine's own."""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass

from ..errors import PierError

_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class PlatformError(PierError, ValueError):
    pass


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        return cls("linux", _MACHINE_ARCH.get(machine, machine))

    @classmethod
    def of(cls, entry: dict) -> Platform:
        return cls(entry.get("os", "?"), entry.get("architecture", "?"), entry.get("variant"))

    def matches(self, entry: dict) -> bool:
        return (
            entry.get("os") == self.os
            and entry.get("architecture") == self.architecture
            and (self.variant is None or entry.get("variant") == self.variant)
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)
