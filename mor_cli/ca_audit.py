"""The CA's signed, append-only record of what it issued, refused, revoked and re-signed.

Why the audit package and not ``index.json``: the index is the CA's working state, rewritten on
every change, so it proves nothing about the past. The audit log (signed entries as leaves of an
RFC 9162 Merkle tree, signed checkpoints) is what the server and the agents keep too, so an
auditor checks the CA with the same command: ``mor audit verify CA_DIR/audit --public-key KEY``,
with ``KEY`` a copy of ``CA_DIR/audit/log_public_key.pem`` taken out of band.

The log is opened *before* the CA changes anything (a locked or damaged log stops the command
first) and closed after one entry, which signs a checkpoint: no entry is ever left unsealed.
The writer key is ``CA_DIR/ca/audit-key.pem`` (Ed25519, 0600), created on first use. Why here
and not in :mod:`crypto.pki`: the audit package is built on :mod:`crypto`, so the CA cannot
import it without a cycle; every ``mor ca`` command that changes the CA goes through this module.

Actions: ``ca.created``, ``certificate.issued`` (``details.source``: ``ca`` when the CA generated
the key, ``csr`` when a site sent a CSR), ``csr.refused`` (outcome ``refused``, with the reason),
``certificate.revoked``, ``crl.signed``.
"""

from __future__ import annotations

import getpass
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError

AUDIT_DIR = "audit"
AUDIT_KEY = Path("ca") / "audit-key.pem"


class CaAudit:
    """One open CA log: :meth:`record` appends an entry in the operator's name."""

    def __init__(self, log: Any, consortium: str) -> None:
        self._log, self.origin = log, f"mor://{consortium}/ca"

    def record(self, action: str, details: Mapping[str, Any], *, outcome: str = "ok",
               digests: Mapping[str, str] | None = None) -> None:
        from audit.errors import AuditError

        try:
            operator = getpass.getuser()
        except (KeyError, OSError):
            operator = "unknown"
        try:
            self._log.append(actor=self.origin, action=action, outcome=outcome, digests=digests,
                             details={**details, "operator": operator})
        except AuditError as exc:
            raise CommandError(f"CA audit log: {exc}") from None


@contextmanager
def ca_audit(directory: str | Path, consortium: str) -> Iterator[CaAudit]:
    """Open ``directory/audit`` for the duration of one CA command."""
    from audit.errors import AuditError
    from audit.log import AuditLog
    from crypto.errors import CryptoError
    from crypto.signing import SigningKey

    directory = Path(directory)
    try:
        key = SigningKey.load_or_create(directory / AUDIT_KEY)
        log = AuditLog.open(directory / AUDIT_DIR, signing_key=key, origin=f"mor://{consortium}/ca")
    except (AuditError, CryptoError) as exc:
        raise CommandError(f"CA audit log: {exc}") from None
    try:
        yield CaAudit(log, consortium)
    finally:
        log.close()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
