"""JSON from a server, parsed with bounds: size and nesting depth.

``json.loads`` of ``[[[[...]]]]`` thousands deep raises ``RecursionError``, which no
caller expects; a document nested deeper than any real manifest, index, config or token
answer is refused with ``UntrustedJSONError`` before it is parsed.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 64  # a manifest is 4 deep, a config with labels about 5
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class UntrustedJSONError(ValueError):
    """Not JSON, or JSON nested deeper than ``MAX_DEPTH``."""


class TooDeepError(UntrustedJSONError):
    """JSON nested deeper than allowed: refused before it was parsed."""


def depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body``, strings skipped."""
    level = deepest = 0
    for match in _STRUCTURE.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            level += 1
            deepest = max(deepest, level)
        elif token in (b"]", b"}"):
            level -= 1
    return deepest


def loads(body: bytes | str, max_depth: int = MAX_DEPTH) -> object:
    """``json.loads`` for untrusted input: every failure is an ``UntrustedJSONError``."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if depth(raw) > max_depth:
        raise TooDeepError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UntrustedJSONError(f"not valid JSON: {str(exc)[:100]}") from None
