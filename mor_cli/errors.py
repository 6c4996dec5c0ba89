"""Re-export of the CLI's one user-facing error, for command modules."""

from mor_cli.main import CommandError

__all__ = ["CommandError"]
