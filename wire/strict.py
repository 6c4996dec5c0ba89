"""Strict JSON for everything that crosses the wire: I-JSON (RFC 7493), checked once, at the edge.

Why: Python's ``json`` accepts more than the other end can use. A lone surrogate (``"\\ud800"``)
parses into a ``str`` that cannot be encoded back to UTF-8, so it blew up only later — in
canonical JSON, SQLite or the JSON reply — as an HTTP 500. An integer such as ``10**400``
parses into a Python ``int`` that overflows the moment it meets a float (``math.isfinite``,
a timestamp comparison, SQLite's 64-bit INTEGER). ``NaN`` / ``Infinity`` literals and
``1e400`` become non-finite floats that no signature, score or calibration can mean.

So every wire message (:class:`wire.messages.WireModel`) runs :func:`json_problem` on its raw
input before any field is validated, and refuses the whole message with the exact path of
the first offending value. That covers the typed fields *and* the free-form objects carried
inside messages (envelopes, privacy reports, sealed vectors, key bindings), which pydantic
alone would pass through unchecked. The rules, from RFC 7493 (I-JSON):

* strings (values and object keys) are valid Unicode: no lone surrogates;
* integers lie within ±(2**53 - 1), so every one is exact as an IEEE double;
* floats are finite;
* nesting is at most :data:`MAX_DEPTH` levels (no message needs more; the walk is iterative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 32
_SHOWN_KEY_CHARS = 40  # a path names keys, but never echoes a huge or hostile one whole


def _key_text(key: str) -> str:
    shown = key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return shown if len(shown) <= _SHOWN_KEY_CHARS else shown[:_SHOWN_KEY_CHARS] + "…"


def _valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return None
        return f"integer out of range (at most ±{MAX_SAFE_INTEGER}, what a float holds exactly)"
    if isinstance(value, float):
        return None if math.isfinite(value) else "not a finite number"
    if isinstance(value, str):
        return None if _valid_unicode(value) else "not valid Unicode (lone surrogate)"
    return None  # already-typed values (models, bytes) are their own validators' business


def json_problem(value: Any, path: str = "") -> str | None:
    """Why ``value`` is not strict I-JSON, as ``"<path>: <reason>"``, or None when it is.

    >>> json_problem({"a": [1, 2**60]})
    'a[1]: integer out of range (at most ±9007199254740991, what a float holds exactly)'
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, Mapping):
            children = []
            for key, child in item.items():
                if isinstance(key, str) and not _valid_unicode(key):
                    return f"{where or '<root>'}: an object key is not valid Unicode (lone surrogate)"
                name = _key_text(key) if isinstance(key, str) else repr(key)
                children.append((child, f"{where}.{name}" if where else name))
        elif isinstance(item, list | tuple):
            children = [(child, f"{where}[{i}]") for i, child in enumerate(item)]
        else:
            reason = _scalar_problem(item)
            if reason is not None:
                return f"{where or '<root>'}: {reason}"
            continue
        if children and depth >= MAX_DEPTH:
            return f"{where or '<root>'}: nested deeper than {MAX_DEPTH} levels"
        stack.extend((child, name, depth + 1) for child, name in reversed(children))
    return None


def require_strict_json(value: Any) -> Any:
    """``value`` unchanged, or ValueError naming the first non-I-JSON value (a pydantic before-validator)."""
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "json_problem", "require_strict_json"]
