"""Load policy files: TOML text -> validated :class:`~policies.schema.Policy`.

Errors name the file, the dotted key and the reason, because the person reading them is a
compliance officer editing a TOML file, not a Python developer reading a traceback. Paths
inside the policy are kept exactly as written, so the digest does not depend on where the
file lies: server, key holder and agents hash the same policy to the same value.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from policies.errors import InsecurePolicyWarning, PolicyFileError, PolicySyntaxError, PolicyValidationError
from policies.schema import Policy

BUILTIN_POLICIES = ("healthcare", "finance", "pilot")

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")
# pydantic error type -> reason template over the error's ctx.
_REASONS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string in quotes",
    "path_type": "must be a path in quotes",
    "tuple_type": "must be an array [ ... ]",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "model_type": "must be a table [ ... ]",
    "model_attributes_type": "must be a table [ ... ]",
    "finite_number": "must be a finite number",
    "missing": "required key is missing",
}


def _key(loc: Sequence[int | str]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _section_model(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (for 'did you mean' and 'table' wording)."""
    model: type[BaseModel] = Policy
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _value(value: Any) -> str:
    """A value as the TOML author wrote it: ``-1``, ``"lots"``, ``true``, ``1e-06``, ``inf``."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _problem(error: Any) -> str:
    loc, kind, ctx = list(error["loc"]), error["type"], error.get("ctx") or {}
    if kind == "policy_rule":
        return f"{ctx['key']}: {ctx['reason']}"
    key = _key(loc) or "(top level)"
    if kind == "extra_forbidden":
        known = list((_section_model(loc[:-1]) or Policy).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
        return f"{key}: unknown key{hint}"
    if kind == "missing" and _section_model(loc) is not None:
        return f"{key}: required table [{key}] is missing"
    if kind in _REASONS:
        reason = _REASONS[kind].format(**{name: _value(v) if isinstance(v, float) else v for name, v in ctx.items()})
    else:
        reason = str(error["msg"]).removeprefix("Value error, ")
    if kind != "missing" and not isinstance(error.get("input"), dict):
        reason += f" (got {_value(error['input'])})"
    return f"{key}: {reason}"


def _parse(text: str, source: str, stacklevel: int) -> Policy:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line, column = (int(position[1]), int(position[2])) if position and position[1] else (None, None)
        reason = message[: position.start()] if position else message
        raise PolicySyntaxError(source, reason, line, column) from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyValidationError(source, [_problem(error) for error in exc.errors()]) from None
    reasons = policy.insecure_reasons()
    if reasons:
        warnings.warn(f"INSECURE POLICY {source}: " + "; ".join(reasons), InsecurePolicyWarning,
                      stacklevel=stacklevel + 1)
    return policy


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy TOML; ``source`` names it in errors. Warns on insecure (pilot) settings."""
    return _parse(text, source, stacklevel=2)


def load_policy(path: str | Path) -> Policy:
    """Load and validate the policy file at ``path``. Warns on insecure (pilot) settings."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PolicyFileError(str(path), "policy file not found") from None
    except IsADirectoryError:
        raise PolicyFileError(str(path), "is a directory, not a policy file") from None
    except OSError as exc:
        raise PolicyFileError(str(path), f"cannot read policy file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PolicyFileError(str(path), f"not UTF-8 text (byte {exc.start}): TOML files must be UTF-8") from None
    return _parse(text, str(path), stacklevel=2)


def builtin_policy_path(name: str) -> Path:
    """Path of a policy file shipped inside the package (works after ``pip install`` too)."""
    if name not in BUILTIN_POLICIES:
        raise PolicyFileError(name, f"unknown built-in policy; choose one of {', '.join(BUILTIN_POLICIES)}")
    return Path(str(resources.files("policies").joinpath(f"{name}.toml")))
