"""Load policy files: TOML text -> validated :class:`~policies.schema.Policy`.

Errors name the file, the dotted key and the reason, because the person reading them is a
compliance officer editing a TOML file, not a Python developer reading a traceback.
"""

from __future__ import annotations

import tomllib
import warnings
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from policies.errors import InsecurePolicyWarning, PolicyFileError, PolicySyntaxError, PolicyValidationError
from policies.schema import Policy

BUILTIN_POLICIES = ("healthcare", "finance", "pilot")


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key (typo?)"
        elif error["type"] == "missing":
            reason = "required key is missing"
        elif "input" in error and not isinstance(error["input"], dict):
            reason = f"{reason} (got {error['input']!r})"
        problems.append(f"{key}: {reason}")
    return problems


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy TOML.

    Paths are kept exactly as written, so the digest of a policy does not depend on where the
    file happens to lie: server, key holder and agents hash the same bytes to the same value.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicySyntaxError(f"{source}: invalid TOML: {exc}") from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyValidationError(source, _problems(exc)) from None
    reasons = policy.insecure_reasons()
    if policy.pilot or policy.privacy.mode == "tls-only":
        warnings.warn(
            f"{source}: INSECURE PILOT POLICY — " + "; ".join(reasons), InsecurePolicyWarning, stacklevel=2
        )
    return policy


def load_policy(path: str | Path) -> Policy:
    """Load and validate the policy file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read policy file: {exc}") from None
    return parse_policy(text, source=str(path))


def builtin_policy_path(name: str) -> Path:
    """Path of a policy file shipped with the package (works after ``pip install`` too)."""
    if name not in BUILTIN_POLICIES:
        raise PolicyFileError(f"unknown built-in policy {name!r}; choose one of {', '.join(BUILTIN_POLICIES)}")
    return Path(str(resources.files("policies").joinpath(f"{name}.toml")))
