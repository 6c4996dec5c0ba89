"""Exceptions and warnings raised by :mod:`policies`.

Every error's ``str()`` is what a compliance officer needs to fix the file, one problem a line:
``FILE: dotted.key: reason (got VALUE)``. No tracebacks, no pydantic jargon.

::

    PolicyError                 base of every error below; carries ``source`` (the file name)
     ├── PolicyFileError        the file is missing, unreadable or not UTF-8
     ├── PolicySyntaxError      the file is not valid TOML; carries ``line`` and ``column``
     └── PolicyValidationError  valid TOML, invalid policy; ``problems`` lists every ``key: reason``

    InsecurePolicyWarning       (a UserWarning) a pilot policy switches a protection off
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised by :mod:`policies`."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(message)


class PolicyFileError(PolicyError):
    """The policy file cannot be read (missing, a directory, no permission, not UTF-8)."""

    def __init__(self, source: str, reason: str) -> None:
        self.reason = reason
        super().__init__(source, f"{source}: {reason}")


class PolicySyntaxError(PolicyError):
    """The policy file is not valid TOML. ``line``/``column`` are 1-based, or None at end of file."""

    def __init__(self, source: str, reason: str, line: int | None, column: int | None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f"line {line}, column {column}" if line is not None else "end of file"
        super().__init__(source, f"{source}: {where}: invalid TOML: {reason}")


class PolicyValidationError(PolicyError):
    """The file parses but breaks the schema; ``problems`` holds each ``dotted.key: reason``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(source, "\n".join(f"{source}: {problem}" for problem in problems))


class InsecurePolicyWarning(UserWarning):
    """A policy switches a protection off (pilot mode). Loud on purpose; also recorded in the audit log."""
