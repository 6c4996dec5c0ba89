"""MoR identities: the one ``mor://<consortium>/<role>/<name>`` URI SAN a certificate carries.

Servers authorise on this CA-issued name, never on the CN (free text) or a request field, so
parsing it is strict: a known role, and a consortium and name of 1-64 safe characters. The CA
(:mod:`crypto.pki`), the CSR checks (:mod:`crypto.csr`) and every TLS peer use these functions.
"""

from __future__ import annotations

import re
from typing import Literal, cast, get_args

from cryptography import x509

from crypto.errors import PKIError

Role = Literal["server", "client", "keyholder", "auditor", "trainer"]  # trainer: opens GRPO rounds (mor server train)
ROLES: tuple[str, ...] = get_args(Role)
IDENTITY_SCHEME = "mor"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(what: str, value: str) -> str:
    """``value`` if it is a usable consortium or party name, else :class:`PKIError`."""
    if not NAME_PATTERN.fullmatch(value):
        raise PKIError(f"{what} {value!r}: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


def make_identity(consortium: str, role: str, name: str) -> str:
    return f"{IDENTITY_SCHEME}://{consortium}/{role}/{name}"


def parse_identity(identity: str) -> tuple[str, Role, str]:
    """Split ``mor://<consortium>/<role>/<name>`` into its parts, validating each."""
    prefix = f"{IDENTITY_SCHEME}://"
    parts = identity[len(prefix):].split("/") if identity.startswith(prefix) else []
    if len(parts) != 3 or parts[1] not in ROLES or not all(NAME_PATTERN.fullmatch(p) for p in (parts[0], parts[2])):
        raise PKIError(f"{identity!r}: not a MoR identity (mor://<consortium>/<role>/<name>)")
    return parts[0], cast(Role, parts[1]), parts[2]


def role_of(identity: str) -> Role:
    return parse_identity(identity)[1]


def identity_of(cert_or_der: x509.Certificate | bytes) -> str:
    """The one ``mor://`` URI SAN of a certificate (DER or PEM bytes accepted)."""
    cert = cert_or_der
    if isinstance(cert, bytes | bytearray):
        try:
            raw = bytes(cert)
            cert = x509.load_pem_x509_certificate(raw) if raw.lstrip().startswith(b"-----") else \
                x509.load_der_x509_certificate(raw)
        except ValueError:
            raise PKIError("not an X.509 certificate") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("certificate has no subjectAltName, so no MoR identity") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PKIError(f"certificate must carry exactly one URI identity, found {len(uris)}")
    parse_identity(uris[0])
    return uris[0]
