"""The effective policy as TOML (what ``mor policy check`` prints), and the one TOML writer.

Every config file the project writes (demo provisioning, test fixtures) goes through
:func:`toml_value` / :func:`toml_document`, so there is one escaping rule, not one per writer.
The effective policy is printed as real TOML, not a dump, so an operator can save it as a fully explicit policy file
(every default spelled out) and get the same digest back. Unset optional keys are printed as
comments, since TOML has no null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.schema import Policy

_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def _is_control(char: str) -> bool:  # TOML basic strings may not hold these literally
    return ord(char) < 0x20 or ord(char) == 0x7F


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (bool, number, string, list, or a mapping as an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite by schema; repr round-trips floats exactly (1e-06, 0.0001)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if _is_control(c) else c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if hasattr(value, "__fspath__"):
        return toml_value(str(value))
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _line(key: str, value: Any) -> str:
    if value is None:
        return f"# {key} is not set"
    text = toml_value(value)
    if isinstance(value, list) and len(text) > 80:  # one item a line, as a person would write it
        text = "[\n" + "".join(f"  {toml_value(item)},\n" for item in value) + "]"
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


def toml_document(tables: Mapping[str, Mapping[str, object]], *, top: Mapping[str, object] | None = None,
                  header: str | None = None) -> str:
    """``top`` keys, then one ``[table]`` per entry of ``tables``; None values are left out (TOML has no null)."""
    lines = [f"# {header}", ""] if header else []
    lines += [f"{key} = {toml_value(value)}" for key, value in (top or {}).items() if value is not None]
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
        lines.append("")
    return "\n".join(lines)
