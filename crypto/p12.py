"""A person's certificate and key as one password-protected PKCS#12 file, for a browser.

Why: browsers take a client certificate only as PKCS#12 (Chromium and Firefox through NSS,
macOS Keychain, Windows' certificate store). An auditor or operator who opens the status
page imports this one file; the PEM key it is made from stays where it was.

What we choose, so the caller chooses nothing dangerous (the recipe style of ``fernet``):

* PBES2 with AES-256-CBC, PBKDF2-HMAC-SHA-256 at :data:`KDF_ROUNDS` rounds and a SHA-256 MAC
  — never the legacy 3DES/RC2/SHA-1 profile some tools still write by default;
* a password of at least :data:`MIN_PASSWORD_CHARS` characters (the file travels; its
  password is all that protects the key on the way);
* the file is created ``0600`` and never overwrites one that exists (``O_EXCL``);
* the certificate must belong to the key, and the CA certificate must have signed it, so a
  mismatched file is refused here instead of failing silently inside a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from crypto.errors import KeyFileError, PKIError
from crypto.identity import identity_of
from crypto.signing import write_private_file

KDF_ROUNDS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA-256
MIN_PASSWORD_CHARS = 8


@dataclass(frozen=True)
class ExportedP12:
    """What :func:`export_p12` wrote: where, for whom, and until when the certificate is valid."""

    path: Path
    identity: str
    serial: int
    not_after_iso: str


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _load_cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM certificate ({what})") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}; consortium certificates use ECDSA or RSA keys")
    return key


def _check_issued_by(cert: x509.Certificate, ca: x509.Certificate, ca_path: Path) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise PKIError(f"the certificate was not issued by the CA certificate {ca_path}") from None


def p12_bytes(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
              ca: x509.Certificate | None, password: str, *, name: str) -> bytes:
    """The PKCS#12 encoding (see the module docstring for the algorithms)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise KeyFileError(f"the PKCS#12 password must have at least {MIN_PASSWORD_CHARS} characters "
                           f"(got {len(password)})")
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(KDF_ROUNDS)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password.encode("utf-8")))
    return pkcs12.serialize_key_and_certificates(name.encode("utf-8"), key, cert, [ca] if ca else None, encryption)


def export_p12(*, cert: str | Path, key: str | Path, out: str | Path, password: str,
               ca: str | Path | None = None) -> ExportedP12:
    """Write ``cert`` + ``key`` (+ the ``ca`` certificate, so the chain is complete) to ``out`` (0600).

    Raises :class:`KeyFileError` for unreadable inputs, a short password, an existing or
    unwritable ``out``; :class:`PKIError` when the certificate is not the key's or not the CA's.
    """
    cert_path, key_path, out_path = Path(cert), Path(key), Path(out)
    certificate, private = _load_cert(cert_path, "certificate"), _load_key(key_path)
    if certificate.public_key() != private.public_key():
        raise PKIError(f"{cert_path} is not the certificate of the key {key_path}")
    ca_cert = None
    if ca is not None:
        ca_cert = _load_cert(Path(ca), "CA certificate")
        _check_issued_by(certificate, ca_cert, Path(ca))
    identity = identity_of(certificate)
    data = p12_bytes(certificate, private, ca_cert, password, name=identity)
    try:
        write_private_file(out_path, data)
    except OSError as exc:  # a folder in the way, no permission, a full disk: say so, no traceback
        raise KeyFileError(f"{out_path}: cannot write the PKCS#12 file: {exc.strerror or exc}") from None
    return ExportedP12(out_path, identity, certificate.serial_number,
                       certificate.not_valid_after_utc.isoformat())
