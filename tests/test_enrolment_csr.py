"""Enrolment without shipping private keys: site keygen + CSR, the CA's checks and audit, install, CRL expiry.

Each refused CSR is refused with its own precise sentence, and nothing is added to the CA's index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from audit import verify_log
from crypto.crl_health import crl_health, read_crl_health
from crypto.csr import generate_key_and_csr, install_certificate, sign_csr
from crypto.errors import CryptoError, KeyFileError, PKIError
from crypto.pki import CertificateAuthority, init_ca
from mor_cli.main import main
from server.admission import RevocationList
from server.rejections import Rejection
from server.status_page import StatusSnapshot, render_status_page

NOW = dt.datetime.now(dt.UTC)


def _csr(key: Any = None, *, uris: tuple[str, ...] = ("mor://testnet/client/alice",), cn: str | None = "alice",
         extra: tuple[x509.GeneralName, ...] = (), ca: bool = False, san: bool = True) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    if san:
        names = [x509.UniformResourceIdentifier(u) for u in uris] + list(extra)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _tampered() -> bytes:
    der = bytearray(x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


REFUSALS: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("wrong consortium", lambda: _csr(uris=("mor://othernet/client/alice",)), "client",
     "the CSR asks for consortium 'othernet'; this CA signs for 'testnet'"),
    ("role not asked for", lambda: _csr(), "server", "the CSR asks for role 'client', not the --role 'server'"),
    ("RSA 1024", lambda: _csr(rsa.generate_private_key(65537, 1024)), "client",  # noqa: S505 - what is refused
     "RSA key of 1024 bits is too short (minimum 2048)"),
    ("Ed25519", lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "client", "key type Ed25519 is not allowed"),
    ("secp256k1", lambda: _csr(ec.generate_private_key(ec.SECP256K1())), "client",
     "key type EC secp256k1 is not allowed"),
    ("bad signature", _tampered, "client", "signature does not verify"),
    ("no SAN", lambda: _csr(san=False), "client", "carries no subjectAltName"),
    ("two identities", lambda: _csr(uris=("mor://testnet/client/alice", "mor://testnet/client/bob")), "client",
     "exactly one mor:// URI identity, found 2"),
    ("not a MoR identity", lambda: _csr(uris=("https://testnet/client/alice",)), "client", "not a MoR identity"),
    ("e-mail name", lambda: _csr(extra=(x509.RFC822Name("a@example.org"),)), "client", "asks for a RFC822Name name"),
    ("DNS for a client", lambda: _csr(extra=(x509.DNSName("alice.example.org"),)), "client",
     "role 'client' does not serve connections"),
    ("CA certificate", lambda: _csr(ca=True), "client", "asks for a CA certificate"),
    ("CN not the name", lambda: _csr(cn="bob"), "client", "subject CN='bob' does not match its identity"),
    ("not a CSR", lambda: b"-----BEGIN NONSENSE-----\n", "client", "not a PEM certificate signing request"),
]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return init_ca(tmp_path / "ca", "testnet")


@pytest.mark.parametrize(("case", "make", "role", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_csr_is_refused_precisely(ca: CertificateAuthority, case: str, make: Callable[[], bytes], role: str,
                                        message: str) -> None:
    with pytest.raises(PKIError) as refused:
        sign_csr(ca, make(), role)
    assert message in str(refused.value)
    assert ca.list() == [] and CertificateAuthority.load(ca.directory).list() == []


def test_keygen_csr_sign_install(tmp_path: Path, ca: CertificateAuthority) -> None:
    site = tmp_path / "site"
    request = generate_key_and_csr(site, "testnet", "keyholder", "kh", dns=["kh.example.org"], ips=["10.0.0.7"])
    assert stat.S_IMODE(request.key_path.stat().st_mode) == 0o600 and not request.renewal
    signed = sign_csr(ca, request.csr_path.read_bytes(), "keyholder")
    cert = x509.load_pem_x509_certificate(signed.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["mor://testnet/keyholder/kh"]
    assert san.get_values_for_type(x509.DNSName) == ["kh.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not any(p.name == "key.pem" for p in ca.directory.rglob("*") if "kh" in p.parts)  # the key stayed home
    installed = install_certificate(site, signed.cert_pem, ca_pem=ca.ca_cert_path.read_bytes())
    assert installed.identity == "mor://testnet/keyholder/kh" and (site / "cert.pem").read_bytes() == signed.cert_pem
    assert [r.identity for r in ca.list()] == ["mor://testnet/keyholder/kh"]
    assert json.loads(ca.index_path.read_text())["certificates"][0]["source"] == "csr"


def test_rsa_2048_is_accepted_and_a_key_is_certified_once(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(65537, 2048)
    assert sign_csr(ca, _csr(key), "client").request.key_type == "RSA 2048"
    ca.revoke("alice")
    with pytest.raises(PKIError, match="certified before; generate a new key"):
        sign_csr(ca, _csr(key), "client")


def test_renewal_overlaps_and_revoke_then_needs_the_serial(tmp_path: Path, ca: CertificateAuthority) -> None:
    site = tmp_path / "site"
    first = generate_key_and_csr(site, "testnet", "client", "alice")
    install_certificate(site, sign_csr(ca, first.csr_path.read_bytes(), "client").cert_pem,
                        ca_pem=ca.ca_cert_path.read_bytes())
    second = generate_key_and_csr(site, "testnet", "client", "alice")
    assert second.renewal and second.key_path.name == "next-key.pem"
    with pytest.raises(PKIError, match="already holds a valid certificate"):
        sign_csr(ca, second.csr_path.read_bytes(), "client")
    renewed = sign_csr(ca, second.csr_path.read_bytes(), "client", renew=True)
    done = install_certificate(site, renewed.cert_pem)
    assert done.renewal and not (site / "next-key.pem").exists() and done.replaced_serial is not None
    assert [r.revoked_at for r in ca.list()] == [None, None]  # overlap: both valid
    with pytest.raises(PKIError, match="holds 2 valid certificates"):
        ca.revoke("alice")
    assert ca.revoke("alice", serial=done.replaced_serial).serial == done.replaced_serial
    with pytest.raises(PKIError, match="renewal cannot change the role"):
        sign_csr(ca, _csr(uris=("mor://testnet/auditor/alice",)), "auditor", renew=True)


def test_install_refuses_a_certificate_for_another_key_or_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    site = tmp_path / "site"
    generate_key_and_csr(site, "testnet", "client", "alice")
    stranger = sign_csr(ca, _csr(), "client")  # alice's identity, someone else's key
    with pytest.raises(PKIError, match="for a different key"):
        install_certificate(site, stranger.cert_pem, ca_pem=ca.ca_cert_path.read_bytes())
    other = init_ca(tmp_path / "other", "testnet")
    foreign = sign_csr(other, (site / "alice.csr.pem").read_bytes(), "client")
    with pytest.raises(PKIError, match="not issued by the consortium CA"):
        install_certificate(site, foreign.cert_pem)
    with pytest.raises(PKIError, match="different CA certificate"):
        install_certificate(site, foreign.cert_pem, ca_pem=other.ca_cert_path.read_bytes())
    with pytest.raises(KeyFileError, match="renewal key is already waiting"):
        generate_key_and_csr(site, "testnet", "client", "alice")
        generate_key_and_csr(site, "testnet", "client", "alice")


def test_cli_keygen_sign_install_and_the_ca_audit_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, site = str(tmp_path / "ca"), tmp_path / "site"
    assert main(["ca", "init", "--dir", d, "--consortium", "testnet"]) == 0
    assert main(["client", "keygen", "--dir", str(site), "--consortium", "testnet", "--name", "alice"]) == 0
    assert stat.S_IMODE((site / "key.pem").stat().st_mode) == 0o600
    csr = str(site / "alice.csr.pem")
    capsys.readouterr()
    assert main(["ca", "sign-csr", csr, "--role", "auditor", "--dir", d]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused: the CSR asks for role 'client', not the --role 'auditor'" in err
    assert main(["ca", "sign-csr", csr, "--role", "client", "--dir", d, "--out", str(tmp_path / "alice.pem")]) == 0
    assert main(["client", "install-cert", str(tmp_path / "alice.pem"), "--dir", str(site),
                 "--ca", str(tmp_path / "ca" / "ca" / "ca.pem")]) == 0
    assert "installed mor://testnet/client/alice" in capsys.readouterr().out
    assert main(["ca", "revoke", "--dir", d, "--name", "alice", "--serial", "zz"]) == 2
    assert "not a hexadecimal serial" in capsys.readouterr().err
    assert main(["ca", "crl", "--dir", d]) == 0
    report = verify_log(tmp_path / "ca" / "audit", tmp_path / "ca" / "audit" / "log_public_key.pem")
    assert report.ok
    actions = report.actions_by_actor["mor://testnet/ca"]
    assert actions == {"ca.created": 1, "csr.refused": 1, "certificate.issued": 1, "crl.signed": 1}


def test_server_and_keyholder_keygen_take_dns_and_refuse_it_for_clients(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "keygen", "--dir", str(tmp_path / "s"), "--consortium", "testnet", "--name", "agg",
                 "--dns", "mor.example.org", "--ip", "127.0.0.1"]) == 0
    assert main(["keyholder", "keygen", "--dir", str(tmp_path / "k"), "--consortium", "testnet", "--name", "kh"]) == 0
    with pytest.raises(SystemExit):  # argparse: a client keygen has no --dns
        main(["client", "keygen", "--dir", str(tmp_path / "c"), "--consortium", "t", "--name", "c", "--dns", "x"])
    capsys.readouterr()
    assert main(["client", "keygen", "--dir", str(tmp_path / "c"), "--consortium", "bad/name", "--name", "c"]) == 2
    assert "consortium 'bad/name'" in capsys.readouterr().err


# -- CRL expiry: warned 7 days ahead, loud once expired --------------------------------------------------
def test_crl_health_thresholds(ca: CertificateAuthority) -> None:
    fine = read_crl_health(ca.crl_path, now=NOW)
    assert fine.warning is None and fine.number == 1 and not fine.expired
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    near = crl_health(crl, now=NOW + dt.timedelta(days=25))
    assert near.warning and "expires at" in near.warning and "mor ca crl" in near.warning and not near.expired
    late = crl_health(crl, now=NOW + dt.timedelta(days=31))
    assert late.expired and late.warning and "EXPIRED" in late.warning


def test_ca_list_shows_the_crl_date_and_warns(tmp_path: Path, ca: CertificateAuthority,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "list", "--dir", str(ca.directory)]) == 0
    out = capsys.readouterr().out
    assert "CRL #1  next update" in out and "WARNING" not in out
    ca.refresh_crl(days=3)
    assert main(["ca", "list", "--dir", str(ca.directory)]) == 0
    out = capsys.readouterr().out
    assert "CRL #2  next update" in out and "WARNING: CRL" in out and "expires at" in out


def test_server_revocation_list_warns_near_expiry_and_logs_expiry_loudly(
        ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    ca.refresh_crl(days=5)
    clock = [NOW.timestamp()]
    revocations = RevocationList(ca.crl_path, ca.ca_cert_path, now=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="server.admission"):
        assert revocations.is_revoked(1) is False
    assert any("expires at" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    health = revocations.health()
    assert health is not None and health.next_update is not None and health.warning
    snapshot = StatusSnapshot(consortium="testnet", privacy_mode="ckks", policy_digest="0" * 64, agents=[],
                              rounds_completed=0, rounds_skipped=0, current_round=None, audit_size=0,
                              audit_root_sha256="0" * 64, router_weights={}, rounds_collected=0, router=None,
                              crl_next_update=health.next_update.timestamp(), crl_warning=health.warning)
    page = render_status_page(snapshot)
    assert "CRL next update" in page and health.next_update.strftime("%Y-%m-%d") in page and "expires at" in page
    clock[0] += 6 * 86400
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="server.admission"), pytest.raises(Rejection, match="expired"):
        revocations.is_revoked(1)
    assert any("REVOCATION LIST EXPIRED" in r.getMessage() for r in caplog.records)


def test_errors_stay_in_the_crypto_tree() -> None:
    assert issubclass(PKIError, CryptoError) and issubclass(KeyFileError, CryptoError)
