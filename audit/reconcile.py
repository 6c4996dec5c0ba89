"""Every log verifies, and every receipt an agent holds is in the server's log: the auditor's cross-check.

Two independent logs are written during a run: the server's, and each agent's own. An agent
stores every signed receipt the server gave it (``receipt.stored``). Reconciling them means,
for each such receipt:

1. the receipt is signed by the server's key and names this agent (the log's origin);
2. its ``audit_index`` is covered by the server's **final signed checkpoint**;
3. the server's leaf at that index has exactly the receipt's ``audit_leaf_sha256``, and an
   RFC 9162 inclusion proof from that leaf to the checkpoint's root verifies;
4. the server entry there is the ``submission.accepted`` of this agent for this task and envelope.

A server that dropped, rewrote or forked its log after giving a receipt fails 2-4; a forged
receipt fails 1. Every log is verified first with :func:`audit.verify_log` under the public
key the auditor got out of band (here: derived from each party's key file by the operator).
Failed checks are *results* (``ok = False`` with precise problems), never exceptions; only a
log that cannot be read at all raises :class:`audit.AuditConfigError`.

Why in :mod:`audit`: ``mor demo`` (``sim.demo``) and ``mor audit report``
(:mod:`audit.report`) both reconcile, and the audit package must not import the simulation.
It reads :class:`wire.messages.Receipt`, the shape the server signs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditConfigError, AuditError, InvalidProofError
from audit.merkle import verify_inclusion
from audit.storage import ENTRIES
from audit.verify import LogState, VerificationReport, scan

SERVER_ACTION = "submission.accepted"


@dataclass
class LogCheck:
    """``audit.verify_log`` of one party's log, summarised."""

    party: str
    directory: str
    ok: bool
    entries: int
    checkpoints: int
    uncovered: int
    problems: list[str] = field(default_factory=list)


@dataclass
class ReceiptCheck:
    agent: str
    task_id: str
    audit_index: int
    ok: bool
    reason: str = ""


@dataclass
class Reconciliation:
    """Everything ``results.json`` records about the audit at the end of a run."""

    logs: list[LogCheck] = field(default_factory=list)
    receipts: list[ReceiptCheck] = field(default_factory=list)
    server_checkpoint_size: int | None = None

    @property
    def logs_ok(self) -> bool:
        return bool(self.logs) and all(log.ok for log in self.logs)

    @property
    def receipts_ok(self) -> bool:
        return bool(self.receipts) and all(r.ok for r in self.receipts)

    def to_dict(self) -> dict[str, Any]:
        return {"verification_passed": self.logs_ok, "reconciliation_passed": self.receipts_ok,
                "server_checkpoint_size": self.server_checkpoint_size,
                "receipts_checked": len(self.receipts), "receipts_failed": sum(not r.ok for r in self.receipts),
                "logs": [asdict(log) for log in self.logs], "receipts": [asdict(r) for r in self.receipts]}


def verify_party(party: str, directory: Path, key: Any) -> tuple[LogCheck, LogState, VerificationReport]:
    """One party's log, verified under ``key`` and required to be sealed; with the replayed state and report."""
    if not directory.is_dir():
        raise AuditConfigError(f"{party}: audit log {directory} does not exist")
    try:
        report, state = scan(directory, key)
    except (AuditError, OSError) as exc:
        raise AuditConfigError(f"{party}: cannot read audit log {directory}: {exc}") from None
    check = LogCheck(party=party, directory=str(directory), ok=report.ok and report.uncovered == 0,
                     entries=report.entries, checkpoints=report.checkpoints, uncovered=report.uncovered,
                     problems=[str(p) for p in report.problems])
    if report.uncovered:
        check.problems.append(f"{report.uncovered} entries after the last signed checkpoint (not closed cleanly?)")
    return check, state, report


def verified_entries(state: LogState) -> list[dict[str, Any]]:
    """The entries of the verified prefix of a scanned log, in order."""
    return [json.loads(line)["entry"] for line in state.files[ENTRIES].lines[: state.tree.size]]


def check_receipt(receipt_data: Any, agent: str, server_key: Any, server_state: LogState,
                  server_entries: list[dict[str, Any]]) -> ReceiptCheck:
    """Steps 1-4 of the module docstring for one ``receipt.stored`` receipt of ``agent``."""
    from pydantic import ValidationError

    from crypto.errors import IntegrityError
    from wire.messages import Receipt

    try:
        receipt = Receipt.model_validate(receipt_data)
    except ValidationError as exc:
        return ReceiptCheck(agent, "?", -1, False, f"not a receipt: {exc.errors()[0]['msg']}")
    fail = ReceiptCheck(agent, receipt.task_id, receipt.audit_index, False)
    try:
        server_key.verify(base64.b64decode(receipt.signature_b64, validate=True), receipt.signed_bytes())
    except (binascii.Error, ValueError, IntegrityError):
        fail.reason = "receipt signature does not verify under the server's key"
        return fail
    if receipt.agent != agent:
        fail.reason = f"receipt names agent {receipt.agent!r}, the log is {agent!r}'s"
        return fail
    checkpoint = server_state.last_checkpoint
    if checkpoint is None or receipt.audit_index >= checkpoint.size:
        size = checkpoint.size if checkpoint else 0
        fail.reason = f"entry {receipt.audit_index} is not covered by the server's final signed checkpoint ({size})"
        return fail
    leaf = server_state.tree.leaf(receipt.audit_index).hex()
    if leaf != receipt.audit_leaf_sha256:
        fail.reason = f"server leaf {receipt.audit_index} is {leaf[:16]}…, the receipt cites " \
                      f"{receipt.audit_leaf_sha256[:16]}…"
        return fail
    try:
        verify_inclusion(leaf, receipt.audit_index, checkpoint.size,
                         server_state.tree.inclusion_path(receipt.audit_index, checkpoint.size), checkpoint.root)
    except InvalidProofError as exc:
        fail.reason = f"inclusion proof against the final checkpoint fails: {exc}"
        return fail
    entry = server_entries[receipt.audit_index]
    details = entry.get("details") or {}
    expected = (agent, SERVER_ACTION, receipt.task_id, receipt.envelope_sha256)
    found = (entry["actor"], entry["action"], details.get("task_id"), details.get("envelope_sha256"))
    if found != expected:
        fail.reason = f"server entry {receipt.audit_index} is {found}, expected {expected}"
        return fail
    return ReceiptCheck(agent, receipt.task_id, receipt.audit_index, True)


def reconcile(server_log: Path, server_key: Any, agent_logs: Mapping[str, tuple[Path, Any]],
              extra_logs: Mapping[str, tuple[Path, Any]] | None = None) -> Reconciliation:
    """Verify every log, then check every agent receipt against the server's final checkpoint.

    ``agent_logs``: agent identity -> (its audit directory, its VerifyKey); ``extra_logs``: other
    parties whose logs are only verified (the key holder).
    """
    result = Reconciliation()
    server_check, server_state, _ = verify_party("server", server_log, server_key)
    result.logs.append(server_check)
    result.server_checkpoint_size = server_state.last_checkpoint.size if server_state.last_checkpoint else None
    server_entries = verified_entries(server_state)
    for party, (directory, key) in (extra_logs or {}).items():
        result.logs.append(verify_party(party, directory, key)[0])
    for agent, (directory, key) in agent_logs.items():
        check, state, _ = verify_party(agent, directory, key)
        result.logs.append(check)
        result.receipts.extend(agent_receipts(agent, verified_entries(state), server_key, server_state,
                                              server_entries))
    return result


def agent_receipts(agent: str, agent_entries: list[dict[str, Any]], server_key: Any, server_state: LogState,
                   server_entries: list[dict[str, Any]]) -> list[ReceiptCheck]:
    """Every ``receipt.stored`` in one agent's verified entries, checked against the server's log."""
    return [check_receipt((entry.get("details") or {}).get("receipt"), agent, server_key, server_state,
                          server_entries)
            for entry in agent_entries if entry["action"] == "receipt.stored"]
