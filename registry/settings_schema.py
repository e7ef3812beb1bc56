"""How a setting is declared: once, as a field of ``Settings``, with everything said about it.

``setting(kind, default, help, ...)`` is a dataclass field whose metadata is a ``Setting``:
its kind (how its text is read), its help for ``--help``, its fuller text for the README and
the words for defaults that depend on other settings. The name gives the rest: the config
file's key, the ``PIER_<NAME>`` variable and the ``--<name-with-dashes>`` flag. The loader,
the flags and the README's table are all made from these, so none can drift from another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .setting_kinds import Kind

T = TypeVar("T")
_METADATA_KEY = "pier.setting"


def env_name(name: str) -> str:
    return f"PIER_{name.upper()}"


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting. ``doc`` (the README's words, markdown) defaults to ``help``; ``help_default``
    and ``doc_default`` say in words a default that is not a plain value (``root``'s depends
    on ``$XDG_DATA_HOME``, ``auth``'s on other settings)."""

    kind: Kind[T]
    default: Callable[[], T]
    help: str
    doc: str = ""
    placeholder: str = ""  # the flag's value in --help, when the kind's says too little (FILE, URL)
    help_default: str = ""
    doc_default: str = ""
    bare: str | None = None  # what the flag means given alone, beyond the kind's (booleans: true)
    repeatable: bool = False  # the flag may be given again; the values are joined with commas
    name: str = ""  # the field's name, filled in by declared()

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def metavar(self) -> str:
        return self.placeholder or self.kind.placeholder

    @property
    def bare_value(self) -> str | None:
        return self.bare if self.bare is not None else self.kind.bare

    @property
    def readme_doc(self) -> str:
        return self.doc or self.help

    def written_default(self) -> str:
        """The default as a user would write it (``100GiB``, ``24h``, ``true``; "" for none)."""
        return self.kind.write(self.default())


def setting(
    kind: Kind[T],
    default: T | Callable[[], T],
    help: str,
    *,
    doc: str = "",
    placeholder: str = "",
    help_default: str = "",
    doc_default: str = "",
    bare: str | None = None,
    repeatable: bool = False,
) -> T:
    """A ``Settings`` field declaring one setting; ``default`` may be a function, called for
    each new ``Settings`` (for defaults read from the environment)."""
    factory: Callable[[], T] = default if callable(default) else (lambda: default)
    declared = Setting(kind, factory, help, doc, placeholder, help_default, doc_default, bare, repeatable)
    metadata = {_METADATA_KEY: declared}
    if callable(default):
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> Mapping[str, Setting[Any]]:
    """Each field of dataclass ``cls`` by name, as declared by ``setting()``; every field must be."""
    table: dict[str, Setting[Any]] = {}
    for field in dataclasses.fields(cls):
        if _METADATA_KEY not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with setting()")
        table[field.name] = dataclasses.replace(field.metadata[_METADATA_KEY], name=field.name)
    return table
