"""The effective policy as TOML: what ``mor policy check`` prints.

Printed as real TOML, not a dump, so an operator can save it as a fully explicit policy file
(every default spelled out) and get the same digest back. Unset optional keys are printed as
comments, since TOML has no null.
"""

from __future__ import annotations

from typing import Any

from policies.schema import Policy

_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def _is_control(char: str) -> bool:  # TOML basic strings may not hold these literally
    return ord(char) < 0x20 or ord(char) == 0x7F


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite by schema; repr round-trips floats exactly (1e-06, 0.0001)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if _is_control(c) else c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _line(key: str, value: Any) -> str:
    if value is None:
        return f"# {key} is not set"
    text = _toml_value(value)
    if isinstance(value, list) and len(text) > 80:  # one item a line, as a person would write it
        text = "[\n" + "".join(f"  {_toml_value(item)},\n" for item in value) + "]"
    return f"{key} = {text}"


def _lines(table: dict[str, Any]) -> list[str]:
    return [_line(key, value) for key, value in table.items()]


def render_toml(policy: Policy) -> str:
    """``policy`` with every default filled in, as TOML that :func:`policies.parse_policy` reads back."""
    effective = policy.to_dict()
    scalars = {key: value for key, value in effective.items() if not isinstance(value, dict)}
    out = _lines(scalars)
    for section, table in effective.items():
        if isinstance(table, dict):
            out += ["", f"[{section}]", *_lines(table)]
    return "\n".join(out) + "\n"
