"""Bind an agent's envelope-signing key (Ed25519) to its CA-issued TLS certificate.

Why: an agent registers its envelope key with the aggregation server at enrolment, so only
the server "knows" which key is whose. Under ``fused-only`` the key holder must not take the
server's word for it (a server that could substitute keys could forge an agent's envelope
around any ciphertext). The binding is a statement signed with the agent's *certificate* key
— which never leaves the agent — so any party that trusts the consortium CA can check, on its
own, that ``signing_key_b64`` belongs to the identity in the certificate.

    binding = bind_signing_key(signing_key.verify_key(), cert_pem=..., tls_key_pem=...)
    identity, key = verify_key_binding(binding, ca_cert_pem=..., now=time.time())

Every failed check is the one opaque :class:`~crypto.errors.IntegrityError` (as for envelopes).
Revocation is the caller's check (it holds the CRL): :func:`verify_key_binding` returns the
certificate's serial for it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.canonical import canonical_json
from crypto.errors import IntegrityError, KeyFileError, PKIError
from crypto.pki import identity_of
from crypto.signing import VerifyKey

DOMAIN = b"mor-secure/envelope-key-binding/v1\n"
_FIELDS = {"signing_key_b64", "certificate_pem", "signature_b64"}


@dataclass(frozen=True)
class BoundKey:
    """A verified binding: whose certificate (identity, serial) vouches for which envelope key."""

    identity: str
    serial: int
    verify_key: VerifyKey


def _statement(identity: str, signing_key_b64: str) -> bytes:
    return DOMAIN + canonical_json({"identity": identity, "signing_key_b64": signing_key_b64})


def bind_signing_key(verify_key: VerifyKey, *, cert_pem: bytes, tls_key_pem: bytes) -> dict[str, str]:
    """The binding (JSON-ready) of ``verify_key`` to the certificate, signed with the certificate's key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(tls_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key binding: unusable certificate or TLS key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise KeyFileError("key binding: the TLS key is not the certificate's (ECDSA) key")
    signing_key_b64 = base64.b64encode(verify_key.raw()).decode("ascii")
    signature = key.sign(_statement(identity_of(cert), signing_key_b64), ec.ECDSA(hashes.SHA256()))
    return {"signing_key_b64": signing_key_b64, "certificate_pem": cert_pem.decode("ascii"),
            "signature_b64": base64.b64encode(signature).decode("ascii")}


def verify_key_binding(binding: Any, *, ca_cert_pem: bytes, now: float | None = None) -> BoundKey:
    """Check the certificate (issued by the CA, valid at ``now``) and its signature over the key."""
    try:
        if not isinstance(binding, Mapping) or set(binding) != _FIELDS:
            raise ValueError("fields")
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert = x509.load_pem_x509_certificate(str(binding["certificate_pem"]).encode("ascii"))
        cert.verify_directly_issued_by(ca)
        at = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ValueError("expired or not yet valid")
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ValueError("not an ECDSA certificate")
        identity = identity_of(cert)
        signing_key_b64 = str(binding["signing_key_b64"])
        public.verify(base64.b64decode(str(binding["signature_b64"]), validate=True),
                      _statement(identity, signing_key_b64), ec.ECDSA(hashes.SHA256()))
        key = VerifyKey.from_bytes(base64.b64decode(signing_key_b64, validate=True))
    except (ValueError, TypeError, UnicodeError, binascii.Error, InvalidSignature, PKIError, KeyFileError):
        raise IntegrityError() from None
    return BoundKey(identity, cert.serial_number, key)


__all__ = ["DOMAIN", "BoundKey", "bind_signing_key", "verify_key_binding"]
