"""Exceptions raised by :mod:`server.router`.

The router's tree hangs under :class:`server.errors.ServerError`, so a caller that catches
every server failure catches these too::

    ServerError
     └── RouterError              anything the Mixture-of-Rewards router refuses
          ├── RouterConfigError   a router cannot be built as asked (unknown kind, bad fixed
          │                       weights, unknown keyword, invalid fit settings)
          ├── RouterInputError    features, scores, masks or agent names of the wrong shape,
          │                       value or name (the message names the argument and why)
          └── RouterStateError    a saved router cannot be loaded: missing or unreadable file,
                                  wrong format, tensors that do not match, digest mismatch
"""

from __future__ import annotations

from server.errors import ServerError


class RouterError(ServerError):
    """Base of every error raised by :mod:`server.router`."""


class RouterConfigError(RouterError):
    """A router or a fit cannot be configured as asked; the message names the setting."""


class RouterInputError(RouterError):
    """Features, scores, masks or agent names are unusable; the message names which and why."""


class RouterStateError(RouterError):
    """A saved router file cannot be loaded; the message names the file and the reason."""
