"""The consortium certificate authority: issue, revoke and list TLS certificates.

Every party gets a certificate whose *one* URI SAN ``mor://<consortium>/<role>/<name>``
(:mod:`crypto.identity`) is its identity. Its key is best generated at the site, which sends
only a CSR (:mod:`crypto.csr` checks it, :meth:`CertificateAuthority.certify` signs it), so the
private key never travels; :meth:`CertificateAuthority.issue` still generates an ECDSA P-256
key here for one-machine setups (demo, tests). Identity: servers authorise on that CA-issued
name, never on the CN (free text) or a request field. Key usage and extended key usage
follow the role, so a client certificate cannot serve and a server one cannot log in.

Layout of a CA directory ``D`` (other code finds a party's files here)::

    D/index.json                        what was issued and revoked (JSON)
    D/ca/ca.pem  D/ca/ca-key.pem        the CA certificate and its key (0600)
    D/ca/crl.pem                        the current revocation list
    D/parties/<name>/cert.pem key.pem ca.pem    a ready bundle per party (key 0600)
    D/parties/<name>/revoked/<serial>/  a revoked bundle, kept when the name is re-issued
    D/parties/<name>/cert-<serial>.pem  a certificate signed from the site's CSR (no key here)
    D/audit/  D/ca/audit-key.pem        the CA's signed audit log of what it issued and refused
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import KeyFileError, PKIError
from crypto.identity import ROLES, Role, check_name, identity_of, make_identity, parse_identity, role_of
from crypto.signing import write_private_file

CertificatePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_EKU = {
    # The aggregation server is also a TLS *client* of the key holder (fused-only mode).
    "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "keyholder": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "auditor": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "trainer": [ExtendedKeyUsageOID.CLIENT_AUTH],  # a TLS client of the service only
}
SERVING_ROLES = ("server", "keyholder")
CLOCK_SKEW = dt.timedelta(minutes=5)
_ENTRY_KEYS = ("name", "role", "identity", "serial", "not_before", "not_after", "revoked_at")
_check_name = check_name
__all__ = ["CLOCK_SKEW", "ROLES", "SERVING_ROLES", "CertificateAuthority", "CertificateRecord", "IssuedCertificate",
           "Role", "identity_of", "init_ca", "make_identity", "parse_identity", "role_of"]


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

    def _active(self, name: str) -> Sequence[dict[str, Any]]:
        return [e for e in self._index["certificates"] if e["name"] == name and not e.get("revoked_at")]

    def _check_request(self, name: str, role: str, dns: Sequence[str], ips: Sequence[str], days: int,
                       renew: bool) -> Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Refuse what no certificate of this CA may say; the checked IP addresses."""
        _check_name("name", name)
        if role not in ROLES:
            raise PKIError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        if (dns or ips) and role not in SERVING_ROLES:
            raise PKIError(f"role {role!r} does not serve connections: --dns/--ip are only for server, keyholder")
        if not 1 <= days <= 3650:
            raise PKIError(f"days={days}: must be 1..3650")
        active = self._active(name)
        if active and not renew:
            raise PKIError(f"{name!r} already holds a valid certificate (serial {active[0]['serial']}); revoke it "
                           "first, or renew it with a new key (`mor ca sign-csr --renew`)")
        if renew and not active:
            raise PKIError(f"{name!r} holds no valid certificate to renew; sign without --renew")
        if renew and any(e["role"] != role for e in active):
            raise PKIError(f"{name!r} holds a {active[0]['role']} certificate: a renewal cannot change the role")
        try:
            return [ipaddress.ip_address(a) for a in ips]
        except ValueError as exc:
            raise PKIError(f"--ip: {exc}") from None

    def certify(self, public_key: CertificatePublicKey, name: str, role: str, *, dns: Sequence[str] = (),
                ips: Sequence[str] = (), days: int = 365, now: dt.datetime | None = None, renew: bool = False,
                source: str = "csr") -> x509.Certificate:
        """Sign a certificate for a key the CA never sees the private half of, and record it in the index.

        ``renew`` issues a second, overlapping certificate to a name that holds a valid one, so a
        site can switch keys without downtime; the CA refuses to certify a key it certified before.
        """
        addresses = self._check_request(name, role, dns, ips, days, renew)
        key_sha256 = hashlib.sha256(public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
        if any(e.get("public_key_sha256") == key_sha256 for e in self._index["certificates"]):
            raise PKIError("this public key was certified before; generate a new key for every certificate")
        start = _utc(now)
        identity = make_identity(self.consortium, role, name)
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
        san.extend(x509.DNSName(h) for h in dns)
        san.extend(x509.IPAddress(a) for a in addresses)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.consortium),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, isinstance(public_key, rsa.RSAPublicKey), False, False,
                                         False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(_EKU[role]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._index["certificates"].append({
            "name": name, "role": role, "identity": identity, "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "dns": list(dns), "ips": [str(a) for a in addresses], "revoked_at": None, "source": source,
            "public_key_sha256": key_sha256,
        })
        self._save_index()
        return cert

    def issue(self, name: str, role: str, *, dns: Sequence[str] = (),
              ips: Sequence[str] = (), days: int = 365, now: dt.datetime | None = None
              ) -> IssuedCertificate:
        """Generate a key *at the CA*, certify it and write its bundle under ``parties/<name>``.

        The private key then has to travel to the site; :mod:`crypto.csr` avoids that.
        """
        self._check_request(name, role, dns, ips, days, renew=False)
        bundle = self.party_dir(name)
        self._archive_revoked_bundle(name, bundle)
        key = ec.generate_private_key(ec.SECP256R1())
        write_private_file(bundle / "key.pem", _pem(key))
        cert = self.certify(key.public_key(), name, role, dns=dns, ips=ips, days=days, now=now, source="ca")
        (bundle / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (bundle / "ca.pem").write_bytes(self.ca_cert_path.read_bytes())
        return IssuedCertificate(name, cast(Role, role), make_identity(self.consortium, role, name),
                                 cert.serial_number, cert.not_valid_after_utc,
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

    def revoke(self, name: str, *, serial: int | None = None, now: dt.datetime | None = None) -> CertificateRecord:
        """Revoke ``name``'s valid certificate (``serial`` picks one during a renewal overlap); new CRL."""
        active = [e for e in self._active(_check_name("name", name))
                  if serial is None or int(e["serial"], 16) == serial]
        if not active:
            known = any(e["name"] == name for e in self._index["certificates"])
            which = f"no valid certificate with serial {serial:x}" if serial is not None else "already revoked"
            raise PKIError(f"{name!r}: {which if known else 'no certificate issued to this name'}")
        if len(active) > 1:
            raise PKIError(f"{name!r} holds {len(active)} valid certificates (serials "
                           f"{', '.join(e['serial'] for e in active)}); name one with --serial")
        entry = active[0]
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
