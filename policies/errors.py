"""Exceptions raised by :mod:`policies`.

::

    PolicyError                 base; ``str()`` is one precise line: ``FILE: key.path: reason``
     ├── PolicySyntaxError      the file is not valid TOML (names line and column)
     ├── PolicyValidationError  valid TOML, invalid policy (names every bad key and why)
     └── PolicyFileError        the file is missing or unreadable
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised by :mod:`policies`."""


class PolicySyntaxError(PolicyError):
    """The policy file is not valid TOML."""


class PolicyValidationError(PolicyError):
    """The policy file parses but violates the schema; ``problems`` lists each ``key: reason``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class PolicyFileError(PolicyError):
    """The policy file cannot be read."""


class InsecurePolicyWarning(UserWarning):
    """A policy switches off a protection (pilot mode). Loud on purpose; recorded in the audit log."""
