"""The consortium certificate authority: issue, revoke and list TLS certificates.

Every party gets an ECDSA P-256 key and a certificate whose *one* URI SAN
``mor://<consortium>/<role>/<name>`` is its identity: servers authorise on that CA-issued
name, never on the CN (free text) or a request field. Key usage and extended key usage
follow the role, so a client certificate cannot serve and a server one cannot log in.

Layout of a CA directory ``D`` (other code finds a party's files here)::

    D/index.json                        what was issued and revoked (JSON)
    D/ca/ca.pem  D/ca/ca-key.pem        the CA certificate and its key (0600)
    D/ca/crl.pem                        the current revocation list
    D/parties/<name>/cert.pem key.pem ca.pem    a ready bundle per party (key 0600)
    D/parties/<name>/revoked/<serial>/  a revoked bundle, kept when the name is re-issued
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import KeyFileError, PKIError
from crypto.signing import write_private_file

Role = Literal["server", "client", "keyholder", "auditor"]
ROLES: tuple[str, ...] = get_args(Role)
IDENTITY_SCHEME = "mor"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EKU = {
    # The aggregation server is also a TLS *client* of the key holder (fused-only mode).
    "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "keyholder": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "auditor": [ExtendedKeyUsageOID.CLIENT_AUTH],
}
_SERVING_ROLES = ("server", "keyholder")
CLOCK_SKEW = dt.timedelta(minutes=5)
_ENTRY_KEYS = ("name", "role", "identity", "serial", "not_before", "not_after", "revoked_at")


def _check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PKIError(f"{what} {value!r}: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


def make_identity(consortium: str, role: str, name: str) -> str:
    return f"{IDENTITY_SCHEME}://{consortium}/{role}/{name}"


def parse_identity(identity: str) -> tuple[str, Role, str]:
    """Split ``mor://<consortium>/<role>/<name>`` into its parts, validating each."""
    prefix = f"{IDENTITY_SCHEME}://"
    parts = identity[len(prefix):].split("/") if identity.startswith(prefix) else []
    if len(parts) != 3 or parts[1] not in ROLES or not all(_NAME.fullmatch(p) for p in (parts[0], parts[2])):
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


@dataclass(frozen=True)
class IssuedCertificate:
    name: str
    role: Role
    identity: str
    serial: int
    not_after: dt.datetime
    cert_path: Path
    key_path: Path
    ca_path: Path


@dataclass(frozen=True)
class CertificateRecord:
    """One line of the CA index."""

    name: str
    role: Role
    identity: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None


def _utc(now: dt.datetime | None) -> dt.datetime:
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now= must be timezone-aware")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _record(entry: dict[str, Any]) -> CertificateRecord:
    revoked = entry.get("revoked_at")
    return CertificateRecord(
        name=entry["name"], role=entry["role"], identity=entry["identity"], serial=int(entry["serial"], 16),
        not_before=dt.datetime.fromisoformat(entry["not_before"]),
        not_after=dt.datetime.fromisoformat(entry["not_after"]),
        revoked_at=dt.datetime.fromisoformat(revoked) if revoked else None,
    )


class CertificateAuthority:
    """A consortium CA living in one directory (see the module docstring for the layout)."""

    def __init__(self, directory: Path, index: dict[str, Any], key: ec.EllipticCurvePrivateKey,
                 cert: x509.Certificate) -> None:
        self.directory = directory
        self.consortium: str = index["consortium"]
        self._index = index
        self._key = key
        self._cert = cert

    # -- paths ------------------------------------------------------------------------------
    @property
    def ca_cert_path(self) -> Path:
        return self.directory / "ca" / "ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "ca" / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def party_dir(self, name: str) -> Path:
        return self.directory / "parties" / _check_name("name", name)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> CertificateAuthority:
        directory = Path(directory)
        index_path = directory / "index.json"
        try:
            index = json.loads(index_path.read_text("utf-8"))
        except FileNotFoundError:
            raise PKIError(f"{directory}: no CA here (missing index.json; run `mor ca init`)") from None
        except (OSError, ValueError) as exc:
            raise PKIError(f"{index_path}: unreadable CA index: {exc}") from None
        for field, kind in (("version", int), ("consortium", str), ("crl_number", int), ("certificates", list)):
            if not isinstance(index, dict) or not isinstance(index.get(field), kind):
                raise PKIError(f"{index_path}: key {field!r} missing or not a {kind.__name__}")
        for i, entry in enumerate(index["certificates"]):
            missing = [k for k in _ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise PKIError(f"{index_path}: certificates[{i}]: missing key(s) {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key((directory / "ca" / "ca-key.pem").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / "ca" / "ca.pem").read_bytes())
        except OSError as exc:
            raise KeyFileError(f"{exc.filename}: cannot read CA file: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{directory / 'ca'}: CA key or certificate is not valid PEM: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyFileError(f"{directory / 'ca' / 'ca-key.pem'}: not an EC private key")
        return cls(directory, index, key, cert)

    # -- operations -------------------------------------------------------------------------
    def list(self) -> list[CertificateRecord]:
        return [_record(e) for e in self._index["certificates"]]

    def _active(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self._index["certificates"] if e["name"] == name and not e.get("revoked_at")), None)

    def issue(self, name: str, role: str, *, dns: Sequence[str] = (),
              ips: Sequence[str] = (), days: int = 365, now: dt.datetime | None = None
              ) -> IssuedCertificate:
        """Issue a key + certificate for ``name`` and write its bundle under ``parties/<name>``."""
        _check_name("name", name)
        if role not in ROLES:
            raise PKIError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        if (dns or ips) and role not in _SERVING_ROLES:
            raise PKIError(f"role {role!r} does not serve connections: --dns/--ip are only for server, keyholder")
        if not 1 <= days <= 3650:
            raise PKIError(f"days={days}: must be 1..3650")
        if self._active(name) is not None:
            raise PKIError(f"{name!r} already holds a valid certificate; revoke it first")
        try:
            addresses = [ipaddress.ip_address(a) for a in ips]
        except ValueError as exc:
            raise PKIError(f"--ip: {exc}") from None
        start = _utc(now)
        identity = make_identity(self.consortium, role, name)
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
        san += [x509.DNSName(h) for h in dns] + [x509.IPAddress(a) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.consortium),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(_EKU[role]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        bundle = self.party_dir(name)
        self._archive_revoked_bundle(name, bundle)
        write_private_file(bundle / "key.pem", _pem(key))
        (bundle / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (bundle / "ca.pem").write_bytes(self.ca_cert_path.read_bytes())
        self._index["certificates"].append({
            "name": name, "role": role, "identity": identity, "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "dns": list(dns), "ips": [str(a) for a in addresses], "revoked_at": None,
        })
        self._save_index()
        return IssuedCertificate(name, cast(Role, role), identity, cert.serial_number, cert.not_valid_after_utc,
                                 bundle / "cert.pem", bundle / "key.pem", bundle / "ca.pem")

    def _archive_revoked_bundle(self, name: str, bundle: Path) -> None:
        """Move a revoked bundle aside (renamed, never overwritten) so the name can be re-issued."""
        if not (bundle / "key.pem").exists():
            return
        revoked = [e for e in self._index["certificates"] if e["name"] == name and e.get("revoked_at")]
        if not revoked:
            raise PKIError(f"{bundle / 'key.pem'}: exists but the index has no certificate for {name!r}")
        archive = bundle / "revoked" / revoked[-1]["serial"]
        archive.mkdir(parents=True, exist_ok=False)
        for file in ("cert.pem", "key.pem", "ca.pem"):
            if (bundle / file).exists():
                os.replace(bundle / file, archive / file)

    def revoke(self, name: str, *, now: dt.datetime | None = None) -> CertificateRecord:
        """Revoke ``name``'s valid certificate and regenerate the CRL."""
        entry = self._active(_check_name("name", name))
        if entry is None:
            known = any(e["name"] == name for e in self._index["certificates"])
            raise PKIError(f"{name!r}: {'already revoked' if known else 'no certificate issued to this name'}")
        entry["revoked_at"] = _utc(now).isoformat()
        self._save_index()
        self.refresh_crl(now=now)
        return _record(entry)

    def refresh_crl(self, *, now: dt.datetime | None = None, days: int = 30) -> Path:
        """Write a new CRL (valid ``days``): TLS peers refuse an expired one, so refresh it in time."""
        start = _utc(now)
        self._index["crl_number"] += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(start - CLOCK_SKEW)
            .next_update(start + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(self._index["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        for entry in self._index["certificates"]:
            if entry.get("revoked_at"):
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(entry["serial"], 16))
                    .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
                    .build()
                )
        crl = builder.sign(self._key, hashes.SHA256())
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.crl_path)
        self._save_index()
        return self.crl_path

    def _save_index(self) -> None:
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._index, indent=2, sort_keys=True) + "\n", "utf-8")
        os.replace(tmp, self.index_path)


def init_ca(directory: str | Path, consortium: str, *, days: int = 3650,
            now: dt.datetime | None = None) -> CertificateAuthority:
    """Create a new consortium CA in ``directory`` (refuses if one is already there)."""
    directory = Path(directory)
    _check_name("consortium", consortium)
    if (directory / "index.json").exists() or (directory / "ca" / "ca-key.pem").exists():
        raise PKIError(f"{directory}: a CA already exists here; refusing to overwrite it")
    start = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} consortium CA"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(directory / "ca" / "ca-key.pem", _pem(key))
    (directory / "ca" / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    index = {"version": 1, "consortium": consortium, "crl_number": 0, "certificates": []}
    ca = CertificateAuthority(directory, index, key, cert)
    ca.refresh_crl(now=now)
    return ca
