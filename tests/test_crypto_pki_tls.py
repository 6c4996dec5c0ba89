"""The consortium CA and mutual TLS 1.3 on loopback, with real certificates and CRLs."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from crypto import (
    CertificateAuthority,
    IntegrityError,
    KeyFileError,
    PKIError,
    client_ssl_context,
    identity_of,
    init_ca,
    parse_identity,
    peer_identity,
    role_of,
    server_ssl_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", "acme")
    parties = {
        "server": ca.issue("aggregator", "server", dns=["localhost"], ips=["127.0.0.1"]),
        "client": ca.issue("hospital-a", "client"),
        "revoked": ca.issue("hospital-b", "client"),
        "auditor": ca.issue("audit", "auditor"),
        "keyholder": ca.issue("kh", "keyholder", dns=["kh.local"]),
    }
    ca.revoke("hospital-b")
    foreign = init_ca(root / "foreign", "evil").issue("hospital-a", "client")
    return {"ca": ca, "foreign": foreign, **parties}


def _server_ctx(pki: dict[str, Any]) -> ssl.SSLContext:
    s, ca = pki["server"], pki["ca"]
    return server_ssl_context(s.cert_path, s.key_path, ca.ca_cert_path, crl=ca.crl_path)


def _client_ctx(pki: dict[str, Any], party: str) -> ssl.SSLContext:
    p, ca = pki[party], pki["ca"]
    return client_ssl_context(p.cert_path, p.key_path, ca.ca_cert_path, crl=ca.crl_path)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """Run one loopback handshake; report what each side saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["version"] = tls.version()
                seen["peer"] = peer_identity(tls.getpeercert(binary_form=True))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            seen["received"] = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        seen["client_error"] = str(exc)
    thread.join(10)
    listener.close()
    return seen


def test_mutual_tls13_handshake_with_valid_client(pki: dict[str, Any]) -> None:
    seen = _handshake(_server_ctx(pki), _client_ctx(pki, "client"))
    assert seen["received"] == b"ok"
    assert seen["version"] == "TLSv1.3"
    assert seen["peer"] == "mor://acme/client/hospital-a"


@pytest.mark.parametrize(
    ("party", "reason"),
    [("revoked", "certificate revoked"), ("foreign", "certificate verify failed")],
)
def test_handshake_rejects_bad_client_certificates(pki: dict[str, Any], party: str, reason: str) -> None:
    p = pki[party]
    client = client_ssl_context(p.cert_path, p.key_path, pki["ca"].ca_cert_path)
    seen = _handshake(_server_ctx(pki), client)
    assert "received" not in seen or seen["received"] != b"ok"
    assert reason in seen["server_error"]


def test_handshake_rejects_client_without_certificate(pki: dict[str, Any]) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cafile=str(pki["ca"].ca_cert_path))
    seen = _handshake(_server_ctx(pki), bare)
    assert "peer did not return a certificate" in seen["server_error"]


def test_client_refuses_server_from_foreign_ca_and_tls12(pki: dict[str, Any]) -> None:
    f = pki["foreign"]
    foreign_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    foreign_server.load_cert_chain(f.cert_path, f.key_path)
    seen = _handshake(foreign_server, _client_ctx(pki, "client"))
    assert "certificate verify failed" in seen["client_error"]
    assert _client_ctx(pki, "client").minimum_version == ssl.TLSVersion.TLSv1_3
    assert _server_ctx(pki).verify_mode == ssl.CERT_REQUIRED
    assert _server_ctx(pki).verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_disabling_hostname_check_warns(pki: dict[str, Any]) -> None:
    c, ca = pki["client"], pki["ca"]
    with pytest.warns(RuntimeWarning, match="insecure"):
        ctx = client_ssl_context(c.cert_path, c.key_path, ca.ca_cert_path, server_hostname_check=False)
    assert ctx.check_hostname is False and ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(KeyFileError, match="cannot load TLS material"):
        server_ssl_context(c.cert_path, ca.ca_cert_path, ca.ca_cert_path)


@pytest.mark.parametrize(
    ("party", "ekus"),
    [("server", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
     ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
     ("auditor", {ExtendedKeyUsageOID.CLIENT_AUTH}),
     ("keyholder", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})],
)
def test_certificates_carry_role_usage_identity_and_validity(pki: dict[str, Any], party: str, ekus: set) -> None:
    issued = pki[party]
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert identity_of(cert) == issued.identity == f"mor://acme/{issued.role}/{issued.name}"
    assert role_of(issued.identity) == issued.role
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=365) < span < dt.timedelta(days=366)
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    assert issued.ca_path.read_bytes() == pki["ca"].ca_cert_path.read_bytes()


def test_server_san_has_dns_and_ip(pki: dict[str, Any]) -> None:
    san = x509.load_pem_x509_certificate(pki["server"].cert_path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_ca_refusals(pki: dict[str, Any], tmp_path: Path) -> None:
    ca: CertificateAuthority = pki["ca"]
    with pytest.raises(PKIError, match="already holds a valid certificate"):
        ca.issue("hospital-a", "client")
    with pytest.raises(PKIError, match="only for server, keyholder"):
        ca.issue("c2", "client", dns=["x"])
    with pytest.raises(PKIError, match="role 'admin'"):
        ca.issue("c3", "admin")
    with pytest.raises(PKIError, match="use 1-64"):
        ca.issue("../etc", "client")
    with pytest.raises(PKIError, match="already revoked"):
        ca.revoke("hospital-b")
    with pytest.raises(PKIError, match="no certificate issued"):
        ca.revoke("nobody")
    with pytest.raises(PKIError, match="already exists"):
        init_ca(ca.directory, "acme")
    with pytest.raises(PKIError, match="no CA here"):
        CertificateAuthority.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "consortium": "x", "crl_number": 1}))
    with pytest.raises(PKIError, match=r"index.json: key 'certificates' missing"):
        CertificateAuthority.load(tmp_path)


def test_revoked_name_can_be_reissued_and_old_bundle_is_kept(tmp_path: Path) -> None:
    ca = init_ca(tmp_path, "acme", now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    first = ca.issue("bank", "client")
    ca.revoke("bank")
    second = CertificateAuthority.load(tmp_path).issue("bank", "client")
    assert second.serial != first.serial
    archived = tmp_path / "parties" / "bank" / "revoked" / format(first.serial, "x") / "key.pem"
    assert archived.exists() and stat.S_IMODE(archived.stat().st_mode) == 0o600
    records = CertificateAuthority.load(tmp_path).list()
    assert [(r.serial, r.revoked_at is not None) for r in records] == [(first.serial, True), (second.serial, False)]
    crl = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(first.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial) is None


def test_identity_parsing_errors() -> None:
    assert parse_identity("mor://acme/keyholder/kh-1") == ("acme", "keyholder", "kh-1")
    for bad in ("https://acme/client/a", "mor://acme/root/a", "mor://acme/client", "mor://acme/client/a/b"):
        with pytest.raises(PKIError, match="not a MoR identity"):
            role_of(bad)
    with pytest.raises(PKIError, match="not an X.509"):
        identity_of(b"garbage")
    with pytest.raises(IntegrityError):
        peer_identity(None)
    with pytest.raises(IntegrityError):
        peer_identity(b"garbage")
