"""A consortium CA and its parties' certificates, for every run on one machine (demo, bench, tests).

Everything is real (:mod:`crypto.pki`: ECDSA P-256, URI-SAN identities, a signed CRL); this
module only picks loopback-friendly defaults: the serving roles (server, key holder) get
certificates valid for ``localhost`` and ``127.0.0.1``, so clients verify the hostname exactly
as in production.

    pki = ConsortiumPKI.create(tmp / "pki", "testnet")
    pki.issue("server", "server"); alice = pki.issue("alice")
    ctx = alice.client_context()                 # ssl.SSLContext for httpx (verify=ctx)
    tls = pki.tls("server")                      # the [tls] table of that party's config
    pki.revoke("alice")                          # rewrites pki.crl
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto.pki import CertificateAuthority, init_ca
from crypto.tls import client_ssl_context

LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)
SERVING_ROLES = ("server", "keyholder")


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
class ConsortiumPKI:
    """A live CA and the parties issued through it (by name)."""

    ca: CertificateAuthority
    parties: dict[str, Party] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, consortium: str) -> ConsortiumPKI:
        """A fresh CA in ``directory`` (which must not hold one already)."""
        return cls(init_ca(Path(directory), consortium))

    @property
    def consortium(self) -> str:
        return self.ca.consortium

    @property
    def directory(self) -> Path:
        return Path(self.ca.directory)

    @property
    def ca_cert(self) -> Path:
        return self.ca.ca_cert_path

    @property
    def crl(self) -> Path:
        return self.ca.crl_path

    def issue(self, name: str, role: str = "client", *, dns: Sequence[str] = (), ips: Sequence[str] = ()) -> Party:
        """Issue a certificate; serving roles get ``localhost``/``127.0.0.1`` SANs, plus ``dns``/``ips``.

        ``dns``/``ips``: the names and addresses a serving party is reached at on a real network
        (hosts in network namespaces, :mod:`sim.harness.netns`); clients verify them as in production.
        """
        serving = role in SERVING_ROLES
        issued = self.ca.issue(name, role, dns=(*(LOOPBACK_DNS if serving else ()), *dns),
                               ips=(*(LOOPBACK_IPS if serving else ()), *ips))
        party = Party(name, role, issued.identity, issued.serial, issued.cert_path, issued.key_path, issued.ca_path)
        self.parties[name] = party
        return party

    def party(self, name: str) -> Party:
        return self.parties[name]

    def of_role(self, role: str) -> Party:
        """The first party issued with ``role`` (KeyError if none)."""
        for party in self.parties.values():
            if party.role == role:
                return party
        raise KeyError(f"no {role} certificate issued in {self.directory}")

    @property
    def server(self) -> Party:
        return self.of_role("server")

    @property
    def keyholder(self) -> Party:
        return self.of_role("keyholder")

    def revoke(self, name: str) -> None:
        """Revoke ``name``'s certificate; the CRL file at :attr:`crl` is replaced atomically."""
        self.ca.revoke(name)

    def identity(self, role: str, name: str) -> str:
        return f"mor://{self.consortium}/{role}/{name}"

    def tls(self, name: str) -> dict[str, object]:
        """The ``[tls]`` table of ``name``'s config: its certificate and key, the CA and the CRL."""
        party = self.parties[name]
        return {"cert": str(party.cert), "key": str(party.key), "ca": str(self.ca_cert), "crl": str(self.crl)}
