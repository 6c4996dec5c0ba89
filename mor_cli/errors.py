"""The CLI's one user-facing error.

Kept in its own module (not in ``main``) so that ``python -m mor_cli.main`` and the ``mor``
script raise and catch the very same class.
"""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""
