"""A consortium CA and certificates in a temporary directory, for tests (on :mod:`sim.harness.pki`).

    pki = make_pki(tmp_path)                     # CA + "server" + "keyholder"
    alice = pki.issue("alice")                   # a client agent certificate
    ctx = alice.client_context()                 # ssl.SSLContext for httpx (verify=ctx)
    pki.revoke("alice")                          # rewrites pki.crl
    stranger = make_pki(tmp_path / "other").issue("mallory")   # a foreign CA's client
"""

from __future__ import annotations

from pathlib import Path

from crypto.pki import init_ca
from sim.harness.pki import ConsortiumPKI, Party


class TestPKI(ConsortiumPKI):
    """The harness's PKI under a name pytest must not collect."""

    __test__ = False


def make_pki(directory: Path, consortium: str = "testnet", *, server_name: str = "server",
             keyholder_name: str = "keyholder") -> TestPKI:
    """Create a CA under ``directory/ca`` and issue the server and key-holder certificates."""
    pki = TestPKI(init_ca(Path(directory) / "ca", consortium))
    pki.issue(server_name, "server")
    pki.issue(keyholder_name, "keyholder")
    return pki


__all__ = ["Party", "TestPKI", "make_pki"]
