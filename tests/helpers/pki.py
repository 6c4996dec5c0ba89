"""A consortium CA and certificates in a temporary directory, for tests.

Everything is real (``crypto.pki``: ECDSA P-256, URI-SAN identities, a signed CRL); this
module only picks test-friendly defaults: the serving certificates are valid for
``localhost`` and ``127.0.0.1`` so clients verify the hostname as in production.

    pki = make_pki(tmp_path)                     # CA + "server" + "keyholder"
    alice = pki.issue("alice")                   # a client agent certificate
    ctx = alice.client_context()                 # ssl.SSLContext for httpx (verify=ctx)
    pki.revoke("alice")                          # rewrites pki.crl
    stranger = make_pki(tmp_path / "other").issue("mallory")   # a foreign CA's client
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from crypto.pki import CertificateAuthority, init_ca
from crypto.tls import client_ssl_context

LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class Party:
    """One issued certificate bundle (cert, key, CA) and its ``mor://`` identity."""

    name: str
    role: str
    identity: str
    serial: int
    cert: Path
    key: Path
    ca: Path

    def client_context(self, *, crl: Path | None = None) -> ssl.SSLContext:
        """A TLS 1.3 client context presenting this party's certificate (for ``httpx``'s ``verify=``)."""
        return client_ssl_context(self.cert, self.key, self.ca, crl)


@dataclass
class TestPKI:
    """A live CA in ``directory``; ``server`` and ``keyholder`` are issued by :func:`make_pki`."""

    __test__ = False  # not a pytest test class

    ca: CertificateAuthority
    directory: Path
    server: Party
    keyholder: Party

    @property
    def consortium(self) -> str:
        return self.ca.consortium

    @property
    def ca_cert(self) -> Path:
        return self.ca.ca_cert_path

    @property
    def crl(self) -> Path:
        return self.ca.crl_path

    def issue(self, name: str, role: str = "client") -> Party:
        """Issue a certificate; serving roles get ``localhost``/``127.0.0.1`` SANs."""
        serving = role in ("server", "keyholder")
        issued = self.ca.issue(
            name, role, dns=LOOPBACK_DNS if serving else (), ips=LOOPBACK_IPS if serving else ()
        )
        return Party(name, role, issued.identity, issued.serial, issued.cert_path, issued.key_path, issued.ca_path)

    def revoke(self, name: str) -> None:
        """Revoke ``name``'s certificate; the CRL file at :attr:`crl` is replaced atomically."""
        self.ca.revoke(name)

    def identity(self, role: str, name: str) -> str:
        return f"mor://{self.consortium}/{role}/{name}"


def make_pki(directory: Path, consortium: str = "testnet", *, server_name: str = "server",
             keyholder_name: str = "keyholder") -> TestPKI:
    """Create a CA under ``directory/ca`` and issue the server and key-holder certificates."""
    ca = init_ca(Path(directory) / "ca", consortium)
    pki = TestPKI(ca=ca, directory=Path(directory) / "ca", server=None, keyholder=None)  # type: ignore[arg-type]
    pki.server = pki.issue(server_name, "server")
    pki.keyholder = pki.issue(keyholder_name, "keyholder")
    return pki
