"""Exceptions raised by :mod:`crypto`.

One tree, so callers can catch exactly what they mean::

    CryptoError
     ├── IntegrityError      any failed check on something received: signature, freshness,
     │                       replay, framing, ciphertext decoding, a peer certificate without
     │                       a MoR identity. Deliberately opaque: the message never says
     │                       *which* check failed (no oracle for forgers).
     ├── KeyFileError        a key/certificate file is missing, unreadable, would be
     │                       overwritten, or has unsafe permissions.
     ├── ParameterError      CKKS parameters outside the HE security standard, or a context
     │                       with a secret key offered where only a public one is allowed.
     └── PKIError            CA misuse: unknown name, already issued, already revoked, bad role,
                             bad --dns/--ip; a malformed identity or certificate given to us locally.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by :mod:`crypto`."""


class IntegrityError(CryptoError):
    """Received data failed verification. Opaque on purpose: see the module docstring."""

    def __init__(self, message: str = "integrity check failed") -> None:
        super().__init__(message)


class KeyFileError(CryptoError):
    """A key or certificate file cannot be used as asked."""


class ParameterError(CryptoError):
    """Cryptographic parameters or contexts that must be refused."""


class PKIError(CryptoError):
    """The certificate authority was asked to do something it must not."""
