"""Enrolment without shipping private keys: site key + CSR, checked and signed by the consortium CA.

Why: a private key generated at the CA has to travel to the site and exists in two places.
Here the site generates its key (0600, never leaves the site) and a certificate signing request
(CSR) that carries only the public key and the identity it asks for; the CA checks the request
against what it may issue and signs it with :meth:`crypto.pki.CertificateAuthority.certify`.

A site keeps its TLS material in one folder ``T``::

    T/key.pem           the private key in use (0600)
    T/cert.pem          its certificate, installed from the CA's reply
    T/ca.pem            the consortium CA certificate
    T/next-key.pem      a renewal key waiting for its certificate (0600)
    T/<name>.csr.pem    the request to hand to the consortium (public)

Renewal (rotation without downtime): a second ``keygen`` writes ``next-key.pem`` while the old
key keeps serving; :func:`install_certificate` then swaps key and certificate in place. Running
processes pick the new pair up on their next connection (:mod:`crypto.tls_reload`), and the old
certificate stays valid at the servers until it is revoked or expires.

The CA refuses (:class:`~crypto.errors.PKIError`, one precise sentence each) a CSR that does not
verify, asks for another consortium, another role than the one the operator signs it for, names
other than its one ``mor://`` URI (plus DNS/IP for serving roles), a CA certificate, or a key
other than ECDSA P-256/P-384 or RSA of 2048-8192 bits. Any other requested extension is ignored:
key usage, validity and serial are the CA's choice, never the requester's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from crypto.errors import KeyFileError, PKIError
from crypto.identity import check_name, identity_of, make_identity, parse_identity
from crypto.pki import ROLES, SERVING_ROLES, CertificateAuthority
from crypto.signing import write_private_file

ALLOWED_KEYS = "ECDSA P-256 or P-384, or RSA of 2048-8192 bits"
_CURVES = ("secp256r1", "secp384r1")
KEY_FILE, NEXT_KEY_FILE, CERT_FILE, CA_FILE = "key.pem", "next-key.pem", "cert.pem", "ca.pem"


@dataclass(frozen=True)
class KeyRequest:
    """What ``keygen`` wrote: the private key (stays here) and the CSR to send."""

    identity: str
    key_path: Path
    csr_path: Path
    renewal: bool


@dataclass(frozen=True)
class CsrRequest:
    """A CSR that passed every check: what the CA will certify."""

    name: str
    role: str
    identity: str
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    key_type: str
    csr_sha256: str


@dataclass(frozen=True)
class SignedCsr:
    request: CsrRequest
    serial: int
    not_after: dt.datetime
    cert_pem: bytes


@dataclass(frozen=True)
class InstalledCertificate:
    identity: str
    serial: int
    not_after: dt.datetime
    cert_path: Path
    renewal: bool
    replaced_serial: int | None  # the certificate this one replaces here (still valid at the CA until revoked)


# -- at the site ------------------------------------------------------------------------------------
def generate_key_and_csr(folder: str | Path, consortium: str, role: str, name: str, *,
                         dns: Sequence[str] = (), ips: Sequence[str] = ()) -> KeyRequest:
    """Write a new P-256 key (0600; ``next-key.pem`` if ``key.pem`` exists) and its CSR into ``folder``."""
    folder = Path(folder)
    check_name("consortium", consortium)
    check_name("name", name)
    if role not in ROLES:
        raise PKIError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if (dns or ips) and role not in SERVING_ROLES:
        raise PKIError(f"role {role!r} does not serve connections: --dns/--ip are only for server, keyholder")
    try:
        addresses = [ipaddress.ip_address(a) for a in ips]
    except ValueError as exc:
        raise PKIError(f"--ip: {exc}") from None
    renewal = (folder / KEY_FILE).exists()
    key_path = folder / (NEXT_KEY_FILE if renewal else KEY_FILE)
    if key_path.exists():
        raise KeyFileError(f"{key_path}: a renewal key is already waiting for its certificate; install it "
                           "(install-cert) or remove it first")
    identity = make_identity(consortium, role, name)
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
    san += [x509.DNSName(h) for h in dns] + [x509.IPAddress(a) for a in addresses]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    csr_path = folder / f"{name}.csr.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return KeyRequest(identity, key_path, csr_path, renewal)


def install_certificate(folder: str | Path, cert_pem: bytes, *, ca_pem: bytes | None = None,
                        now: dt.datetime | None = None) -> InstalledCertificate:
    """Check the CA's reply against this site's key(s) and CA, then put it in place as ``cert.pem``.

    A certificate for ``next-key.pem`` completes a renewal: key and certificate are each replaced
    atomically (a reader that sees the pair half-swapped fails to load it and keeps the old one).
    """
    folder = Path(folder)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise PKIError("not a PEM certificate") from None
    if ca_pem is not None:
        _install_ca(folder / CA_FILE, ca_pem)
    try:
        ca = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{folder / CA_FILE}: cannot read the consortium CA certificate: {exc.strerror} "
                           "(pass --ca)") from None
    except ValueError:
        raise KeyFileError(f"{folder / CA_FILE}: not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"certificate was not issued by the consortium CA in {folder / CA_FILE}") from None
    moment = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= moment:
        raise PKIError(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
    identity = identity_of(cert)
    replaced = None
    if (folder / CERT_FILE).exists():
        current_cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        current, replaced = identity_of(current_cert), current_cert.serial_number
        if current != identity:
            raise PKIError(f"certificate is for {identity}, but {folder / CERT_FILE} is {current}: refusing to "
                           "replace one party's certificate with another's")
    spki = _spki(cert.public_key())
    renewal = (folder / NEXT_KEY_FILE).exists() and _spki(_load_public(folder / NEXT_KEY_FILE)) == spki
    if not renewal and not ((folder / KEY_FILE).exists() and _spki(_load_public(folder / KEY_FILE)) == spki):
        raise PKIError(f"certificate is for a different key than {folder / KEY_FILE} or {folder / NEXT_KEY_FILE}")
    tmp = folder / f".{CERT_FILE}.tmp"
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if renewal:
        os.replace(folder / NEXT_KEY_FILE, folder / KEY_FILE)
    os.replace(tmp, folder / CERT_FILE)
    return InstalledCertificate(identity, cert.serial_number, cert.not_valid_after_utc, folder / CERT_FILE, renewal,
                                replaced if replaced != cert.serial_number else None)


def _install_ca(path: Path, ca_pem: bytes) -> None:
    try:
        x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise PKIError("--ca: not a PEM certificate") from None
    if path.exists() and path.read_bytes() != ca_pem:
        raise PKIError(f"{path}: holds a different CA certificate; refusing to replace the consortium's trust anchor")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ca_pem)


def _load_public(path: Path) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), None).public_key()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- at the CA --------------------------------------------------------------------------------------
def read_csr(data: bytes, source: str = "CSR") -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise PKIError(f"{source}: not a PEM certificate signing request") from None


def _key_type(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise PKIError(f"key type EC {key.curve.name} is not allowed (allowed: {ALLOWED_KEYS})")
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PKIError(f"RSA key of {key.key_size} bits is too short (minimum 2048)")
        if key.key_size > 8192:
            raise PKIError(f"RSA key of {key.key_size} bits is larger than the 8192 bits accepted")
        return f"RSA {key.key_size}"
    kind = type(key).__name__.lstrip("_").removesuffix("PublicKey") or "unknown"
    raise PKIError(f"key type {kind} is not allowed (allowed: {ALLOWED_KEYS})")


def check_csr(csr: x509.CertificateSigningRequest, consortium: str, role: str) -> CsrRequest:
    """Every check the CA makes before signing; the first failure is the error."""
    if role not in ROLES:
        raise PKIError(f"--role {role!r}: must be one of {', '.join(ROLES)}")
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not verify: it was not signed by the key it carries")
    key = csr.public_key()
    key_type = _key_type(key)
    try:
        extensions = csr.extensions
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("the CSR carries no subjectAltName, so it asks for no MoR identity") from None
    except ValueError as exc:
        raise PKIError(f"the CSR's extensions cannot be parsed: {exc}") from None
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise PKIError("the CSR asks for a CA certificate; this CA issues end-entity certificates only")
    allowed = (x509.UniformResourceIdentifier, x509.DNSName, x509.IPAddress)
    other = [type(n).__name__ for n in san if not isinstance(n, allowed)]
    if other:
        raise PKIError(f"the CSR asks for a {other[0]} name; only one mor:// URI (and DNS/IP names for server, "
                       "keyholder) may be requested")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PKIError(f"the CSR must ask for exactly one mor:// URI identity, found {len(uris)}")
    asked_consortium, asked_role, name = parse_identity(uris[0])
    if asked_consortium != consortium:
        raise PKIError(f"the CSR asks for consortium {asked_consortium!r}; this CA signs for {consortium!r}")
    if asked_role != role:
        raise PKIError(f"the CSR asks for role {asked_role!r}, not the --role {role!r} it is being signed for")
    dns = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    if (dns or ips) and role not in SERVING_ROLES:
        raise PKIError(f"role {role!r} does not serve connections: the CSR may not ask for DNS or IP names")
    for label, oid, expected in (("CN", NameOID.COMMON_NAME, name), ("O", NameOID.ORGANIZATION_NAME, consortium)):
        for attribute in csr.subject.get_attributes_for_oid(oid):
            if attribute.value != expected:
                raise PKIError(f"the CSR's subject {label}={attribute.value!r} does not match its identity {uris[0]}")
    digest = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CsrRequest(name, role, uris[0], dns, ips, key, key_type, digest)  # type: ignore[arg-type]


def sign_csr(ca: CertificateAuthority, csr_pem: bytes, role: str, *, source: str = "CSR", renew: bool = False,
             days: int = 365, now: dt.datetime | None = None) -> SignedCsr:
    """Check ``csr_pem`` for ``role`` and certify its key; the caller hands ``cert_pem`` to the site."""
    request = check_csr(read_csr(csr_pem, source), ca.consortium, role)
    cert = ca.certify(request.public_key, request.name, role, dns=request.dns, ips=request.ips, days=days,
                      now=now, renew=renew, source="csr")
    return SignedCsr(request, cert.serial_number, cert.not_valid_after_utc,
                     cert.public_bytes(serialization.Encoding.PEM))
